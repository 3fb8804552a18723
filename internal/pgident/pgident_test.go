package pgident

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSchemaLengthIsRiversLimit(t *testing.T) {
	ok := strings.Repeat("a", 46)
	got, err := Schema(ok)
	require.NoError(t, err)
	require.Equal(t, ok, got)
	_, err = Schema(ok + "a")
	require.ErrorContains(t, err, "at most 46 (River's limit)")
	_, err = Schema("Bad-Name")
	require.ErrorContains(t, err, "lower-case letters")
}
