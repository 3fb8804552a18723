package expr

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// decode turns a JSON document into its encoding/json form.
func decode(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m))
	return m
}

// ev builds an event whose data is the given JSON object.
func ev(t testing.TB, data string) map[string]any {
	t.Helper()
	return decode(t, `{"id":"01J0","name":"order/created","ts":"2024-05-01T12:00:00Z","data":`+data+`}`)
}

func TestBoolNumeric(t *testing.T) {
	tests := []struct {
		src  string
		data string
		want bool
	}{
		{`event.data.amount > 100`, `{"amount": 150}`, true},
		{`event.data.amount > 100`, `{"amount": 50}`, false},
		{`event.data.amount > 100`, `{"amount": 100}`, false},
		{`event.data.amount >= 100`, `{"amount": 100}`, true},
		{`event.data.amount > 100.5`, `{"amount": 101}`, true},
		{`event.data.amount > 100.5`, `{"amount": 100}`, false},
		{`event.data.count == 1`, `{"count": 1}`, true},
		{`event.data.count == 1`, `{"count": 1.5}`, false},
		{`event.data.count != 1`, `{"count": 2}`, true},
		{`event.data.count == 1.0`, `{"count": 1}`, true},
		{`1.0 == 1`, `{}`, true},
		{`1 == 1.0`, `{}`, true},
		{`1 < 1.5`, `{}`, true},
		{`2u > 1.5`, `{}`, true},
		{`[1, 2] == [1.0, 2.0]`, `{}`, true},
		{`event.data.n < 2`, `{"n": 1}`, true},
		{`event.data.n < 2`, `{"n": 2}`, false},
		{`event.data.n <= 2.0`, `{"n": 2}`, true},
		{`event.data.n + 1.0 == 3`, `{"n": 2}`, true},
		{`event.data.a < event.data.b`, `{"a": 1, "b": 2}`, true},
		{`event.data.n == -0.5`, `{"n": -0.5}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.src+" "+tc.data, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			got, err := p.Bool(ev(t, tc.data), nil)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestBoolAccess(t *testing.T) {
	const data = `{
		"amount": 150,
		"userId": "u1",
		"orgId": "o9",
		"s": "abc",
		"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}],
		"tags": ["x", "y"],
		"nested": {"deep": {"v": true}},
		"nothing": null,
		"empty": {}
	}`
	tests := []struct {
		src  string
		want bool
	}{
		{`event.name == "order/created"`, true},
		{`event.name != "order/created"`, false},
		{`event.id == "01J0"`, true},
		{`event.ts == "2024-05-01T12:00:00Z"`, true},
		{`event.ts.startsWith("2024-")`, true},
		{`timestamp(event.ts) > timestamp("2024-01-01T00:00:00Z")`, true},
		{`size(event.data.items) == 2`, true},
		{`event.data.items.size() == 2`, true},
		{`size(event.data.s) == 3`, true},
		{`size(event.data.nested) == 1`, true},
		{`event.data.items[0].sku == "a"`, true},
		{`event.data.items[1].qty > 2`, true},
		{`event.data.items[1]["qty"] == 3`, true},
		{`event.data.items.exists(i, i.sku == "b")`, true},
		{`event.data.items.all(i, i.qty > 0)`, true},
		{`event.data.items.exists(i, i.missing == null)`, true},
		{`event.data.items.map(i, i.qty).exists(q, q == 3)`, true},
		{`event.data.items.filter(i, i.qty > 1).size() == 1`, true},
		{`"x" in event.data.tags`, true},
		{`"z" in event.data.tags`, false},
		{`"amount" in event.data`, true},
		{`"missing" in event.data`, false},
		{`"nothing" in event.data`, true},
		{`event.data.tags == ["x", "y"]`, true},
		{`["x", "y"] == event.data.tags`, true},
		{`event.data.tags + ["z"] == ["x", "y", "z"]`, true},
		{`event.data.s.startsWith("a")`, true},
		{`event.data.s.endsWith("c")`, true},
		{`event.data.s.contains("b")`, true},
		{`event.data.s.matches("^a.c$")`, true},
		{`event.data.s.startsWith("b")`, false},
		{`event.data.userId + "-" + event.data.orgId == "u1-o9"`, true},
		{`event.data.nested.deep.v`, true},
		{`event["data"]["nested"]["deep"]["v"]`, true},
		{`event.data["nested"].deep["v"] == true`, true},
		{`event.data[event.data.s == "abc" ? "userId" : "orgId"] == "u1"`, true},
		{`event.data.nested == {"deep": {"v": true}}`, true},
		{`{"deep": {"v": true}} == event.data.nested`, true},
		{`event.data.nested == {"deep": {"v": false}}`, false},
		{`event.data.empty == {}`, true},
		{`event.data.nested.exists(k, k == "deep")`, true},
		{`type(event.data) == map`, true},
		{`type(event.data.amount) == double`, true},
		{`type(event.data.tags) == list`, true},
		{`type(event.data.missing) == null_type`, true},
		{`int(event.data.amount) == 150`, true},
		{`string(event.data.amount) == "150"`, true},
		{`dyn(event.data.amount) == 150`, true},
		{`event.data.amount > 100 && event.data.s == "abc"`, true},
		{`event.data.amount > 1000 || event.data.s == "abc"`, true},
		{`!(event.data.amount > 1000)`, true},
		{`event.data.amount > 100 ? true : false`, true},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			got, err := p.Bool(ev(t, data), nil)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestMissingAndNull(t *testing.T) {
	const data = `{"present": 1, "nothing": null, "obj": {"a": 1}, "list": [null, {"a": 2}], "s": "x"}`
	tests := []struct {
		src         string
		want        bool
		wantErr     string // substring of the evaluation error, if any
		wantMissing string // the missing field, if the error is a *MissingFieldError
	}{
		{src: `event.data.missing == null`, want: true},
		{src: `null == event.data.missing`, want: true},
		{src: `event.data.missing != null`, want: false},
		{src: `event.data["missing"] == null`, want: true},
		{src: `event.data.nothing == null`, want: true},
		{src: `event.data.present == null`, want: false},
		{src: `event.data.present != null`, want: true},
		{src: `event.missing == null`, want: true},
		// Null propagates along a selection path through missing members...
		{src: `event.data.missing.deeper == null`, want: true},
		{src: `event.data.missing.deeper.still.more == null`, want: true},
		{src: `event.data.missing["deeper"] == null`, want: true},
		{src: `event.data.obj.b.c == null`, want: true},
		{src: `event.missing.data.x == null`, want: true},
		// ...and through members that are JSON null.
		{src: `event.data.nothing.deeper == null`, want: true},
		{src: `event.data.nothing["deeper"].x == null`, want: true},
		{src: `event.data.list[1].a == 2`, want: true},
		{src: `event.data.list[1].b.c == null`, want: true},
		{src: `event.data.list[0] == null`, want: true},
		// Comparing a missing member with a number is a MissingFieldError,
		// not a panic or a silent false.
		{src: `event.data.missing > 5`, wantMissing: "event.data.missing"},
		{src: `event.data.missing.deeper < 5`, wantMissing: "event.data.missing"},
		{src: `event.data.missing + 1 == 2`, wantMissing: "event.data.missing"},
		{src: `event.data.missing.startsWith("a")`, wantMissing: "event.data.missing"},
		// A member holding null is present: using it is an ordinary error.
		{src: `event.data.nothing > 5`, wantErr: "no such overload"},
		{src: `event.data.nothing.deeper > 5`, wantMissing: "event.data.nothing.deeper"},
		{src: `event.data.missing == "x"`, want: false},
		{src: `event.data.missing == 0`, want: false},
		// CEL's error absorption in logical operators.
		{src: `event.data.missing > 5 || true`, want: true},
		{src: `event.data.missing > 5 && false`, want: false},
		{src: `event.data.missing != null && event.data.missing > 5`, want: false},
		// has() reports actual presence.
		{src: `has(event.data.present)`, want: true},
		{src: `has(event.data.missing)`, want: false},
		{src: `has(event.data.nothing)`, want: true},
		{src: `has(event.data.obj.a)`, want: true},
		{src: `has(event.data.obj.b)`, want: false},
		{src: `has(event.data.missing.deeper)`, want: false},
		{src: `has(event.data.nothing.deeper)`, want: false},
		{src: `has(event.data)`, want: true},
		{src: `has({"a": 1}.a)`, want: true},
		{src: `has({"a": 1}.b)`, want: false},
		{src: `event.data.list.exists(i, has(i.a))`, want: true},
		{src: `event.data.list.all(i, i == null || has(i.a))`, want: true},
		{src: `has(event.data.s.x)`, wantErr: "invalid argument to has()"},
		// Errors that are not about null.
		{src: `event.data.list[5] == null`, wantErr: "index out of bounds"},
		{src: `event.data.s > 5`, wantErr: "no such overload"},
		{src: `event.data.s.x == null`, wantErr: "no such key"},
		{src: `event.data.missing[0] == null`, wantMissing: "event.data.missing"},
		{src: `event.data.nothing[0] == null`, wantErr: "no such key"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			got, err := p.Bool(ev(t, data), nil)
			if tc.wantMissing != "" {
				require.Equal(t, &MissingFieldError{Expr: tc.src, Field: tc.wantMissing}, err)
				require.False(t, got)
				return
			}
			if tc.wantErr != "" {
				require.Error(t, err)
				require.Contains(t, err.Error(), tc.wantErr)
				_, isMissing := IsMissingField(err)
				require.False(t, isMissing, "%v", err)
				require.False(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// TestNullNeverLeaks checks that the internal null used along selection
// paths always surfaces as a real CEL null.
func TestNullNeverLeaks(t *testing.T) {
	tests := []string{
		`[event.data.missing][0] == null`,
		`[event.data.missing.x] == [null]`,
		`{"a": event.data.missing.x}.a == null`,
		`{"a": event.data.missing.x} == {"a": null}`,
		`(event.data.n == 1 ? event.data.missing.x : 1) == null`,
		`(event.data.n == 2 ? 1 : event.data.nothing.x) == null`,
		`dyn(event.data.missing.x) == null`,
		`event.data.missing.x in [null]`,
		`null in [event.data.missing.x]`,
		`event.data.list.map(i, i.missing.deeper) == [null, null]`,
		`event.data.list.all(i, i.missing.deeper == null)`,
		`type(event.data.missing.x) == null_type`,
		`[event.data.missing.x, event.data.nothing][1] == null`,
	}
	for _, src := range tests {
		t.Run(src, func(t *testing.T) {
			p, err := Compile(src, EventOnly)
			require.NoError(t, err)
			got, err := p.Bool(ev(t, `{"n": 1, "nothing": null, "list": [{}, {"a": 1}]}`), nil)
			require.NoError(t, err)
			require.True(t, got)
		})
	}

	p, err := Compile(`[event.data.missing.x, {"k": event.data.nothing.y}]`, EventOnly)
	require.NoError(t, err)
	v, err := p.Value(ev(t, `{"nothing": null}`), nil)
	require.NoError(t, err)
	require.Equal(t, []any{nil, map[string]any{"k": nil}}, v)
}

func TestHeterogeneousEquality(t *testing.T) {
	tests := []struct {
		src  string
		want bool
	}{
		{`1.0 == 1`, true},
		{`1 == 1.0`, true},
		{`1.5 != 1`, true},
		{`1u == 1.0`, true},
		{`1 != 1u`, false},
		{`size(event.data) == 1.0`, true},
		{`int(event.data.n) == 1.0`, true},
		{`event.data.n == 1u`, true},
		// Values of unrelated types are unequal rather than a compile error.
		{`event.name == 1`, false},
		{`"1" == 1`, false},
		{`"1" != 1`, true},
		{`event.data == null`, false},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			got, err := p.Bool(ev(t, `{"n": 1}`), nil)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestAsync(t *testing.T) {
	event := ev(t, `{"x": "k1", "n": 1, "obj": {"id": 7}}`)
	tests := []struct {
		src   string
		async map[string]any
		want  bool
	}{
		{`event.data.x == async.data.x`, ev(t, `{"x": "k1"}`), true},
		{`event.data.x == async.data.x`, ev(t, `{"x": "k2"}`), false},
		{`event.data.n == async.data.n`, ev(t, `{"n": 1.0}`), true},
		{`event.data.obj.id == async.data.obj.id`, ev(t, `{"obj": {"id": 7}}`), true},
		{`event.data.obj == async.data.obj`, ev(t, `{"obj": {"id": 7}}`), true},
		{`event.data.obj == async.data.obj`, ev(t, `{"obj": {"id": 8}}`), false},
		{`async.name == "order/created" && event.name == async.name`, ev(t, `{}`), true},
		// Both missing: null == null.
		{`event.data.missing == async.data.missing`, ev(t, `{}`), true},
		// A nil async is null, and selection on it is null.
		{`async == null`, nil, true},
		{`async.data.x == null`, nil, true},
		{`event.data.x == async.data.x`, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventAndAsync)
			require.NoError(t, err)
			got, err := p.Bool(event, tc.async)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		src  string
		vars Vars
		want []string
	}{
		{`event.data.x == async.data.x`, EventOnly, []string{"ERROR: <input>:1:17:", "undeclared reference to 'async'"}},
		{`async.data.x`, EventOnly, []string{"<input>:1:1:", "'async'"}},
		{`event.data.x ==`, EventOnly, []string{"ERROR: <input>:1:16:", "Syntax error"}},
		{`event.data.x == "unterminated`, EventAndAsync, []string{"<input>:1:17:", "Syntax error"}},
		{"event.data.x == 1 &&\n  evnt.name == \"a\"", EventOnly, []string{"<input>:2:3:", "undeclared reference to 'evnt'"}},
		{`event.data.x.foo(1)`, EventOnly, []string{"<input>:1:17:", "undeclared reference to 'foo'"}},
		{`has(event)`, EventOnly, []string{"<input>:1:5:", "invalid argument to has() macro"}},
		{`1 + "a"`, EventOnly, []string{"<input>:1:3:", "no matching overload"}},
		{``, EventOnly, []string{"Syntax error"}},
		{`event.data.x`, Vars(7), []string{"invalid variable set"}},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, tc.vars)
			require.Error(t, err)
			require.Nil(t, p)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestOutputIsBoolOrDyn(t *testing.T) {
	tests := []struct {
		src  string
		want bool
	}{
		{`event.data.amount > 100`, true},
		{`event.data.flag`, true}, // dyn
		{`event.data.x == async.data.x`, true},
		{`has(event.data.x)`, true},
		{`true`, true},
		{`"hello"`, false},
		{`1 + 2`, false},
		{`[true]`, false},
		{`event.data.userId + "-x"`, false},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventAndAsync)
			require.NoError(t, err)
			require.Equal(t, tc.want, p.OutputIsBoolOrDyn())
			require.Equal(t, tc.src, p.Source())
		})
	}
}

func TestBoolNotBool(t *testing.T) {
	for _, src := range []string{`"hello"`, `event.data.n`, `event.data.nothing`, `event.data`} {
		t.Run(src, func(t *testing.T) {
			p, err := Compile(src, EventOnly)
			require.NoError(t, err)
			_, err = p.Bool(ev(t, `{"n": 1, "nothing": null}`), nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), "want bool")
		})
	}
}

func TestValueAndString(t *testing.T) {
	const data = `{
		"userId": "u1", "orgId": "o9", "n": 1, "f": 1.5, "big": 1e21, "small": 0.0000001,
		"neg": -3, "flag": true, "obj": {"b": 2, "a": [1, "x", null]}, "list": [1, 2.5, "s"],
		"nothing": null
	}`
	tests := []struct {
		src       string
		wantValue any
		wantStr   string
	}{
		{`event.data.userId`, "u1", "u1"},
		{`event.data.userId + "-" + event.data.orgId`, "u1-o9", "u1-o9"},
		{`event.data.n`, float64(1), "1"},
		{`event.data.f`, 1.5, "1.5"},
		{`event.data.neg`, float64(-3), "-3"},
		{`event.data.big`, 1e21, "1e+21"},
		{`event.data.small`, 1e-7, "1e-7"},
		{`int(event.data.n) + 41`, int64(42), "42"},
		{`18446744073709551615u`, uint64(18446744073709551615), "18446744073709551615"},
		{`event.data.n * 2.5`, 2.5, "2.5"},
		{`event.data.flag`, true, "true"},
		{`event.data.n > 5`, false, "false"},
		{`event.data.missing`, nil, "null"},
		{`event.data.missing.deeper`, nil, "null"},
		{`event.data.nothing`, nil, "null"},
		{`event.data.list`, []any{float64(1), 2.5, "s"}, `[1,2.5,"s"]`},
		{`event.data.obj`, map[string]any{"b": float64(2), "a": []any{float64(1), "x", nil}}, `{"a":[1,"x",null],"b":2}`},
		{`[event.data.userId, event.data.n]`, []any{"u1", float64(1)}, `["u1",1]`},
		{`{"u": event.data.userId, "o": event.data.obj.b}`, map[string]any{"u": "u1", "o": float64(2)}, `{"o":2,"u":"u1"}`},
		{`{1: "a"}`, map[string]any{"1": "a"}, `{"1":"a"}`},
		{`event.data.obj.a.map(x, x == null ? "nil" : string(x))`, []any{"1", "x", "nil"}, `["1","x","nil"]`},
		{`b"ab"`, []byte("ab"), `"YWI="`},
		{`timestamp(event.ts)`, mustTime(t, "2024-05-01T12:00:00Z"), "2024-05-01T12:00:00Z"},
		{`duration("90s")`, mustDuration(t, "90s"), "1m30s"},
		{`type(event.data.n)`, "double", "double"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			e := ev(t, data)
			v, err := p.Value(e, nil)
			require.NoError(t, err)
			require.Equal(t, tc.wantValue, v)
			s, err := p.String(e, nil)
			require.NoError(t, err)
			require.Equal(t, tc.wantStr, s)
		})
	}
}

func TestValueErrors(t *testing.T) {
	tests := []struct {
		src     string
		wantErr string
	}{
		{`event.data.missing + "x"`, `field "event.data.missing" is missing`},
		{`event.data.n + "x"`, "no such overload"},
		{`1 / 0`, "division by zero"},
		// Arithmetic stays strict: there is no double + int overload.
		{`event.data.n + 1`, "no such overload"},
		{`event.data.list[3]`, "index out of bounds"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventOnly)
			require.NoError(t, err)
			_, err = p.Value(ev(t, `{"list": [], "n": 1}`), nil)
			require.ErrorContains(t, err, tc.wantErr)
			_, err = p.String(ev(t, `{"list": [], "n": 1}`), nil)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestNeverPanics(t *testing.T) {
	ch := make(chan int)
	weird := []map[string]any{
		nil,
		{},
		{"data": nil},
		{"data": "not an object"},
		{"data": []any{1, 2}},
		{"data": map[string]any{"amount": ch, "x": func() {}, "items": []any{ch, nil, map[string]any(nil)}}},
		{"data": map[string]any{"amount": map[string]any(nil)}},
		{"data": map[string]any{"amount": []int{1, 2}, "x": json.Number("12"), "y": json.Number("1.5e3"), "z": json.Number("bad")}},
		{"data": map[string]any{"amount": struct{ A int }{1}}},
		{"data": map[string]any{"amount": int64(7), "x": uint8(3), "items": []map[string]any{{"sku": "a"}}}},
	}
	exprs := []string{
		`event.data.amount > 100`,
		`event.data.x == event.data.y`,
		`event.data.items[0].sku == "a"`,
		`size(event.data.items) > 0`,
		`"a" in event.data.items`,
		`has(event.data.amount)`,
		`event.data.amount.x.y == null`,
		`event.data.items.exists(i, i.sku == "a")`,
		`event.data[0] == 1`,
		`event.data.z > 1`,
		`event.data`,
		`event`,
		`event.data.amount`,
	}
	for _, src := range exprs {
		p, err := Compile(src, EventAndAsync)
		require.NoError(t, err, src)
		for i, e := range weird {
			t.Run(fmt.Sprintf("%s/%d", src, i), func(t *testing.T) {
				require.NotPanics(t, func() {
					_, _ = p.Bool(e, e)
					_, _ = p.Value(e, e)
					_, _ = p.String(e, e)
				})
			})
		}
	}

	// Conversions that do succeed on odd Go inputs.
	p, err := Compile(`event.data.x == 12 && event.data.y == 1500.0 && event.data.amount == 7`, EventOnly)
	require.NoError(t, err)
	got, err := p.Bool(map[string]any{"data": map[string]any{"x": json.Number("12"), "y": json.Number("1.5e3"), "amount": int64(7)}}, nil)
	require.NoError(t, err)
	require.True(t, got)

	p, err = Compile(`event.data.items[0].missing == null`, EventOnly)
	require.NoError(t, err)
	got, err = p.Bool(map[string]any{"data": map[string]any{"items": []map[string]any{{"sku": "a"}}}}, nil)
	require.NoError(t, err)
	require.True(t, got)

	var nilProgram *Program
	_, err = nilProgram.Bool(nil, nil)
	require.Error(t, err)
}

func TestCostLimit(t *testing.T) {
	items := make([]any, 2000)
	for i := range items {
		items[i] = float64(i)
	}
	e := map[string]any{"data": map[string]any{"items": items}}

	p, err := Compile(`event.data.items.all(i, event.data.items.all(j, i + j >= 0.0))`, EventOnly)
	require.NoError(t, err)
	_, err = p.Bool(e, nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "cost limit exceeded")

	p, err = Compile(`event.data.items.all(i, i >= 0.0)`, EventOnly)
	require.NoError(t, err)
	got, err := p.Bool(e, nil)
	require.NoError(t, err)
	require.True(t, got)
}

func TestConcurrentBool(t *testing.T) {
	p, err := Compile(`event.data.amount > 100 && event.data.missing.x == null && has(event.data.amount)`, EventOnly)
	require.NoError(t, err)
	big, small := ev(t, `{"amount": 150}`), ev(t, `{"amount": 50}`)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				e, want := big, true
				if (g+i)%2 == 1 {
					e, want = small, false
				}
				got, err := p.Bool(e, nil)
				if err != nil {
					errs <- err
					return
				}
				if got != want {
					errs <- fmt.Errorf("goroutine %d iteration %d: got %v, want %v", g, i, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestCache(t *testing.T) {
	var c Cache
	p1, err := c.Compile(`event.data.x == 1`, EventOnly)
	require.NoError(t, err)
	p2, err := c.Compile(`event.data.x == 1`, EventOnly)
	require.NoError(t, err)
	require.Same(t, p1, p2)

	p3, err := c.Compile(`event.data.x == 1`, EventAndAsync)
	require.NoError(t, err)
	require.NotSame(t, p1, p3)

	_, err = c.Compile(`async.data.x == 1`, EventOnly)
	require.ErrorContains(t, err, "undeclared reference to 'async'")
	_, err2 := c.Compile(`async.data.x == 1`, EventOnly)
	require.Equal(t, err, err2)

	// Concurrent first use of the same and different sources.
	var wg sync.WaitGroup
	progs := make([]*Program, 16)
	for i := range progs {
		wg.Go(func() {
			src := fmt.Sprintf(`event.data.n == %d`, i%4)
			p, err := c.Compile(src, EventOnly)
			if err == nil {
				progs[i] = p
			}
		})
	}
	wg.Wait()
	for i, p := range progs {
		require.NotNil(t, p)
		require.Same(t, progs[i%4], p)
		require.True(t, strings.HasSuffix(p.Source(), fmt.Sprint(i%4)))
	}
}

func TestVarsString(t *testing.T) {
	require.Equal(t, "EventOnly", EventOnly.String())
	require.Equal(t, "EventAndAsync", EventAndAsync.String())
	require.Equal(t, "Vars(5)", Vars(5).String())
}

func BenchmarkBool(b *testing.B) {
	p, err := Compile(`event.data.amount > 100`, EventOnly)
	require.NoError(b, err)
	e := ev(b, `{"amount": 150, "userId": "u1"}`)
	b.ReportAllocs()
	for b.Loop() {
		ok, err := p.Bool(e, nil)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

func BenchmarkBoolAsync(b *testing.B) {
	p, err := Compile(`event.name == "order/created" && event.data.userId == async.data.userId`, EventAndAsync)
	require.NoError(b, err)
	e := ev(b, `{"amount": 150, "userId": "u1"}`)
	a := ev(b, `{"userId": "u1"}`)
	b.ReportAllocs()
	for b.Loop() {
		ok, err := p.Bool(e, a)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	require.NoError(t, err)
	return tm
}

func mustDuration(t testing.TB, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	require.NoError(t, err)
	return d
}
