package store

import (
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadFillsEveryQuery(t *testing.T) {
	q, err := Load("s")
	require.NoError(t, err)
	v := reflect.ValueOf(q).Elem()
	for i := 0; i < v.NumField(); i++ {
		sql := v.Field(i).String()
		name := v.Type().Field(i).Name
		require.NotEmpty(t, sql, name)
		require.NotContains(t, sql, "{{schema}}", name)
		require.NotContains(t, sql, "\n--", "%s: comment lines are dropped", name)
	}
	require.True(t, strings.HasPrefix(q.RunStatus, `SELECT status FROM "s".durable_run`), q.RunStatus)
}

func TestParseRefusesADuplicateName(t *testing.T) {
	blocks := map[string]string{}
	require.NoError(t, parse("-- name: A\nSELECT 1;\n", "a.sql", blocks))
	err := parse("-- name: A\nSELECT 2;\n", "b.sql", blocks)
	require.ErrorContains(t, err, "query A defined twice (b.sql)")
}
