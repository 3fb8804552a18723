package expr

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBoolOutput(t *testing.T) {
	t.Parallel()
	event := ev(t, `{"amount": 150}`)
	tests := []struct {
		src, output string
		want        bool
		missing     string // the missing field reported, if any
	}{
		{`output.total > 100`, `{"total": 120}`, true, ""},
		{`output.total > 100`, `{"total": 20}`, false, ""},
		{`output.total > 100`, `{}`, false, "output.total"},
		{`output == "done"`, `"done"`, true, ""},
		{`output == 42`, `42`, true, ""},
		{`size(output) == 2`, `[1, 2]`, true, ""},
		{`output == null`, `null`, true, ""},
		{`output == null`, ``, true, ""}, // no output at all
		{`output.total == null`, ``, true, ""},
		{`event.data.amount > 100 && output.ok`, `{"ok": true}`, true, ""},
		{`event.data.amount > 100 && output.ok`, `{"ok": false}`, false, ""},
	}
	for _, tt := range tests {
		p, err := Compile(tt.src, EventAndOutput)
		require.NoError(t, err, tt.src)
		var out any
		if tt.output != "" {
			require.NoError(t, json.Unmarshal([]byte(tt.output), &out))
		}
		got, err := p.BoolOutput(event, out)
		if tt.missing != "" {
			mf, ok := IsMissingField(err)
			require.True(t, ok, "%s on %s: %v", tt.src, tt.output, err)
			require.Equal(t, tt.missing, mf.Field)
		} else {
			require.NoError(t, err, "%s on %s", tt.src, tt.output)
		}
		require.Equal(t, tt.want, got, "%s on %s", tt.src, tt.output)
	}
}

func TestEventAndOutputVariables(t *testing.T) {
	t.Parallel()
	_, err := Compile(`async.data.x == 1`, EventAndOutput)
	require.ErrorContains(t, err, "undeclared reference to 'async'")
	_, err = Compile(`output == 1`, EventAndAsync)
	require.ErrorContains(t, err, "undeclared reference to 'output'")
	_, err = Compile(`output == 1`, EventOnly)
	require.ErrorContains(t, err, "undeclared reference to 'output'")
	require.Equal(t, "EventAndOutput", EventAndOutput.String())
}
