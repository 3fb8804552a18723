package expr

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAsyncEquality(t *testing.T) {
	tests := []struct {
		src       string
		wantOK    bool
		wantPath  string
		wantValue string // source of Equality.Value
	}{
		{`event.data.orderId == async.data.orderId`, true, "data.orderId", "event.data.orderId"},
		{`async.data.orderId == event.data.orderId`, true, "data.orderId", "event.data.orderId"},
		{`async.name == "x" && event.data.a == async.data.a`, true, "name", `"x"`},
		{`event.data.a == async.data.a && async.name == "x"`, true, "data.a", "event.data.a"},
		{`event.data.ok && async.data.id == event.data.id`, true, "data.id", "event.data.id"},
		{`(event.data.n > 1 && async.data.a == 1) && async.b == 2`, true, "data.a", "1"},
		{`async.data.x > 1 && async.name == "y" && async.data.z == "w"`, true, "name", `"y"`},
		{`async.data.n == 1`, true, "data.n", "1"},
		{`1.5 == async.data.n`, true, "data.n", "1.5"},
		{`async.data.a.b.c == event.data.a + "-" + event.name`, true, "data.a.b.c", `event.data.a + "-" + event.name`},
		{`async["data"]["orderId"] == event.data.orderId`, true, "data.orderId", "event.data.orderId"},
		{`async.data["k"] == event.data.items.map(i, i.sku)[0]`, true, "data.k", `event.data.items.map(i, i.sku)[0]`},
		{`async.data.a == (has(event.data.y) ? event.data.y : "z")`, true, "data.a", `(has(event.data.y)) ? event.data.y : "z"`},
		{`async.data.a == event.data.tags.exists(t, t == "x")`, true, "data.a", `event.data.tags.exists(t, t == "x")`},
		{`async.data.a == "say \"hi\"\n"`, true, "data.a", `"say \"hi\"\n"`},
		{`async.data.a == null`, true, "data.a", "null"},

		{`async.data.a == event.data.a || true`, false, "", ""},
		{`async.data.a != event.data.a`, false, "", ""},
		{`!(async.data.a == event.data.a)`, false, "", ""},
		{`async.data.items[0] == event.data.x`, false, "", ""},
		{`async.data["a.b"] == event.data.x`, false, "", ""},
		{`async.data[event.data.k] == 1`, false, "", ""},
		{`size(async.data.s) == 1`, false, "", ""},
		{`async.data.s.size() == 1`, false, "", ""},
		{`async.data.a == async.data.b`, false, "", ""},
		{`async.data.a == event.data.a + async.data.b`, false, "", ""},
		{`async == event`, false, "", ""},
		{`has(async.data.a)`, false, "", ""},
		{`async.data.a in [1, 2]`, false, "", ""},
		{`async.data.a == event.data.a ? true : false`, false, "", ""},
		{`event.data.a == 1`, false, "", ""},
		{`true`, false, "", ""},
		{`(async.data.a == 1) == true`, false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventAndAsync)
			require.NoError(t, err)
			eq, ok := p.AsyncEquality()
			require.Equal(t, tc.wantOK, ok)
			if !ok {
				require.Equal(t, Equality{}, eq)
				return
			}
			require.Equal(t, tc.wantPath, eq.Path)
			require.NotNil(t, eq.Value)
			require.Equal(t, tc.wantValue, eq.Value.Source())
			// Memoized: the same result every time.
			eq2, ok2 := p.AsyncEquality()
			require.True(t, ok2)
			require.Same(t, eq.Value, eq2.Value)
		})
	}
}

func TestAsyncEqualityEventOnlyAndNil(t *testing.T) {
	p, err := Compile(`event.data.a == 1`, EventOnly)
	require.NoError(t, err)
	_, ok := p.AsyncEquality()
	require.False(t, ok)

	var nilProgram *Program
	_, ok = nilProgram.AsyncEquality()
	require.False(t, ok)
}

func TestAsyncEqualityValueKey(t *testing.T) {
	event := ev(t, `{"orderId": "o-123", "n": 2, "m": {"a": 1}, "nothing": null}`)
	tests := []struct {
		src     string
		wantKey string
		wantOK  bool
		wantErr bool
	}{
		{`event.data.orderId == async.data.orderId`, "s:o-123", true, false},
		{`async.data.n == event.data.n`, "n:2", true, false},
		{`async.data.n == 1`, "n:1", true, false},
		{`async.data.n == 1.0`, "n:1", true, false},
		{`async.data.n == 1u`, "n:1", true, false},
		{`async.data.n == -0.0`, "n:0", true, false},
		{`async.data.n == event.data.n * 2.0`, "n:4", true, false},
		{`async.data.s == string(event.data.n)`, "s:2", true, false},
		{`async.data.b == true`, "b:true", true, false},
		{`async.data.n == 3.0 / 2.0`, "n:1.5", true, false},
		{`async.data.n == 2.0 * 1.0`, "n:2", true, false},
		{`async.data.n == -9223372036854775808`, "n:-9223372036854776000", true, false}, // rendered as a float64,
		{`async.data.s == "h\u00e9\u200b\t\"x\""`, "s:h\u00e9\u200b\t\"x\"", true, false},
		{`async.name == event.name`, "s:order/created", true, false},
		// Not indexable: null (a missing member reads as null), maps, lists,
		// values no JSON leaf can equal.
		{`async.data.x == event.data.missing`, "", false, false},
		{`async.data.x == event.data.nothing`, "", false, false},
		{`async.data.x == null`, "", false, false},
		{`async.data.x == event.data.m`, "", false, false},
		{`async.data.x == [1]`, "", false, false},
		{`async.data.x == b"abc"`, "", false, false},
		{`async.data.x == timestamp("2024-01-01T00:00:00Z")`, "", false, false},
		{`async.data.x == duration("1s")`, "", false, false},
		// Evaluation errors are reported.
		{`async.data.x == event.data.missing + 1`, "", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventAndAsync)
			require.NoError(t, err)
			eq, ok := p.AsyncEquality()
			require.True(t, ok)
			key, ok, err := eq.Value.Key(event, nil)
			if tc.wantErr {
				require.Error(t, err)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.wantKey, key)
		})
	}
}

func TestKeyOf(t *testing.T) {
	type named string
	tests := []struct {
		v      any
		want   string
		wantOK bool
	}{
		{"abc", "s:abc", true},
		{"", "s:", true},
		{"1", "s:1", true},
		{"true", "s:true", true},
		{"null", "s:null", true},
		{1.0, "n:1", true},
		{float64(2), "n:2", true},
		{1.5, "n:1.5", true},
		{-2.25, "n:-2.25", true},
		{math.Copysign(0, -1), "n:0", true},
		{1e21, "n:1e+21", true},
		{1e-7, "n:1e-7", true},
		{int64(1), "n:1", true},
		{uint64(1), "n:1", true},
		{int(3), "n:3", true},
		{int32(-3), "n:-3", true},
		{uint8(7), "n:7", true},
		{float32(0.5), "n:0.5", true},
		{json.Number("1"), "n:1", true},
		{json.Number("1.0"), "n:1", true},
		{json.Number("2.5"), "n:2.5", true},
		{json.Number("x"), "", false},
		{int64(1 << 53), "n:9007199254740992", true},
		{int64(1<<53 + 1), "n:9007199254740992", true}, // CEL: equal to the double 2^53
		{true, "b:true", true},
		{false, "b:false", true},
		{named("x"), "s:x", true},
		{nil, "", false},
		{map[string]any{"a": 1.0}, "", false},
		{[]any{"a"}, "", false},
		{[]byte("a"), "", false},
		{time.Unix(0, 0), "", false},
		{time.Second, "", false},
	}
	for _, tc := range tests {
		got, ok := KeyOf(tc.v)
		require.Equal(t, tc.wantOK, ok, "%#v", tc.v)
		require.Equal(t, tc.want, got, "%#v", tc.v)
	}
}

// TestKeyAgreesWithLeaves checks that a JSON leaf and a CEL expression
// yielding an equal value get the same key, and that the number and bool
// renderings agree with Program.String.
func TestKeyAgreesWithLeaves(t *testing.T) {
	tests := []struct {
		json string // the leaf, as JSON
		expr string // an expression yielding an equal value
	}{
		{`1`, `1`},
		{`1.0`, `1`},
		{`1`, `1.0`},
		{`1`, `1u`},
		{`-7`, `-7`},
		{`0`, `-0.0`},
		{`-0`, `0`},
		{`1.5`, `1.5`},
		{`1.5`, `3.0 / 2.0`},
		{`0.1`, `0.1`},
		{`1e21`, `1e21`},
		{`1e21`, `1000000000000000000000.0`},
		{`123456789012`, `123456789012`},
		{`9007199254740992`, `9007199254740993`}, // equal in CEL (int compared as double)
		{`0.000001`, `1e-6`},
		{`1e-7`, `0.0000001`},
		{`"abc"`, `"abc"`},
		{`""`, `""`},
		{`"1"`, `"1"`},
		{`"o-1"`, `"o" + "-" + string(1)`},
		{`true`, `true`},
		{`false`, `(1 > 2)`},
	}
	for _, tc := range tests {
		t.Run(tc.json+" "+tc.expr, func(t *testing.T) {
			obj := decode(t, `{"v":`+tc.json+`}`)
			leaves := Leaves(obj, 10)
			leafKey, ok := leaves["v"]
			require.True(t, ok)

			// The values are equal in CEL ...
			p, err := Compile(`async.v == `+tc.expr, EventAndAsync)
			require.NoError(t, err)
			match, err := p.Bool(nil, obj)
			require.NoError(t, err)
			require.True(t, match)

			// ... and so are their keys.
			v, err := Compile(tc.expr, EventOnly)
			require.NoError(t, err)
			key, ok, err := v.Key(nil, nil)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, leafKey, key)

			// Apart from the kind prefix the key is Program.String's
			// rendering (except for ints beyond 2^53, which String prints
			// exactly, and -0, which String prints as "-0").
			if tc.expr != `9007199254740993` && tc.expr != `-0.0` {
				s, err := v.String(nil, nil)
				require.NoError(t, err)
				require.Equal(t, s, key[2:])
			}
		})
	}
}

func TestKeyDistinguishesKinds(t *testing.T) {
	tests := []struct{ a, b string }{
		{`"1"`, `1`},
		{`"true"`, `true`},
		{`"n:1"`, `1`},
		{`1`, `true`},
		{`0`, `false`},
		{`1`, `1.5`},
	}
	for _, tc := range tests {
		obj := decode(t, `{"a":`+tc.a+`,"b":`+tc.b+`}`)
		p, err := Compile(`async.a == async.b`, EventAndAsync)
		require.NoError(t, err)
		eq, err := p.Bool(nil, obj)
		require.NoError(t, err)
		require.False(t, eq, "%s vs %s", tc.a, tc.b)
		leaves := Leaves(obj, 10)
		require.NotEqual(t, leaves["a"], leaves["b"], "%s vs %s", tc.a, tc.b)
	}
}

func TestLeaves(t *testing.T) {
	tests := []struct {
		name string
		json string
		max  int
		want map[string]string
	}{
		{
			name: "example",
			json: `{"data":{"orderId":"o-1","n":2,"tags":["a"]}, "name":"x"}`,
			max:  100,
			want: map[string]string{"data.orderId": "s:o-1", "data.n": "n:2", "name": "s:x"},
		},
		{
			name: "kinds",
			json: `{"s":"a","i":1,"f":1.5,"t":true,"F":false,"z":null,"e":{},"l":[],"neg":-0}`,
			max:  100,
			want: map[string]string{"s": "s:a", "i": "n:1", "f": "n:1.5", "t": "b:true", "F": "b:false", "neg": "n:0"},
		},
		{
			name: "lists are skipped, including objects inside them",
			json: `{"items":[{"sku":"a"},{"sku":"b"}],"m":[[1]],"ok":{"deep":{"x":1}}}`,
			max:  100,
			want: map[string]string{"ok.deep.x": "n:1"},
		},
		{
			name: "keys with dots or empty keys are skipped with their subtree",
			json: `{"a.b":1,"c":{"d.e":{"f":1},"g":2},"":{"h":3},"x":{"":4}}`,
			max:  100,
			want: map[string]string{"c.g": "n:2"},
		},
		{
			name: "cap stops after max leaves in sorted depth-first order",
			json: `{"e":5,"b":{"d":3,"c":2},"a":1}`,
			max:  3,
			want: map[string]string{"a": "n:1", "b.c": "n:2", "b.d": "n:3"},
		},
		{
			name: "cap of one",
			json: `{"e":5,"b":{"d":3,"c":2},"a":1}`,
			max:  1,
			want: map[string]string{"a": "n:1"},
		},
		{
			name: "cap equal to the number of leaves",
			json: `{"e":5,"b":{"d":3,"c":2},"a":1}`,
			max:  4,
			want: map[string]string{"a": "n:1", "b.c": "n:2", "b.d": "n:3", "e": "n:5"},
		},
		{
			name: "nulls and lists do not count towards the cap",
			json: `{"a":null,"b":[1,2],"c":"x","d":"y"}`,
			max:  1,
			want: map[string]string{"c": "s:x"},
		},
		{
			name: "zero max",
			json: `{"a":1}`,
			max:  0,
			want: map[string]string{},
		},
		{
			name: "negative max",
			json: `{"a":1}`,
			max:  -1,
			want: map[string]string{},
		},
		{
			name: "empty object",
			json: `{}`,
			max:  10,
			want: map[string]string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Leaves(decode(t, tc.json), tc.max))
		})
	}
	require.Equal(t, map[string]string{}, Leaves(nil, 10))
}

func TestLeavesDeterministicUnderCap(t *testing.T) {
	obj := map[string]any{}
	for i := range 50 {
		obj[strings.Repeat("k", i+1)] = float64(i)
	}
	first := Leaves(obj, 10)
	require.Len(t, first, 10)
	for range 20 {
		require.Equal(t, first, Leaves(obj, 10))
	}
}

// TestIndexProperty checks the indexing guarantee: whenever a program is
// true for an event E and a candidate A, and its equality's value has a key
// for E, the candidate's leaves hold that key at the equality's path.
func TestIndexProperty(t *testing.T) {
	programs := []struct {
		src  string
		path string
	}{
		{`event.data.orderId == async.data.orderId`, "data.orderId"},
		{`async.data.orderId == event.data.orderId && async.name == "order/paid"`, "data.orderId"},
		{`async.name == "order/paid" && async.data.n == event.data.n`, "name"},
		{`event.data.n > 0 && async.data.n == event.data.n`, "data.n"},
		{`async.data.n == 1`, "data.n"},
		{`async.data.n == 1.5`, "data.n"},
		{`async.data.n == 1u`, "data.n"},
		{`async.data.n == -0.0`, "data.n"},
		{`async.data.n == int(event.data.n)`, "data.n"},
		{`async.data.n == event.data.n * 1.0`, "data.n"},
		{`async.data.big == 9007199254740993`, "data.big"},
		{`async.data.big == event.data.big`, "data.big"},
		{`async.data.s == string(event.data.n)`, "data.s"},
		{`async.data.s == event.data.s`, "data.s"},
		{`async.data.s == event.data.orderId`, "data.s"},
		{`async.data.flag == event.data.flag`, "data.flag"},
		{`async.data.flag == true`, "data.flag"},
		{`async.data.nested.id == event.data.nested.id`, "data.nested.id"},
		{`async["data"]["nested"]["id"] == event.data.orderId`, "data.nested.id"},
		{`async.data.x == event.data.y`, "data.x"},
		{`event.data.x == async.data.m`, "data.m"},
		{`async.data.list == event.data.list`, "data.list"},
	}
	pool := []any{
		nil, "missing", // "missing" is replaced by an absent key
		float64(0), math.Copysign(0, -1), float64(1), float64(2), 1.5, -1.0,
		float64(1 << 53), 1e21,
		"1", "1.5", "o-1", "o-2", "", "true",
		true, false,
		[]any{"a"}, []any{float64(1)},
		map[string]any{"id": "o-1"}, map[string]any{"id": float64(1)}, map[string]any{},
	}
	fields := []string{"orderId", "n", "big", "s", "flag", "nested", "x", "y", "m", "list"}
	rng := rand.New(rand.NewPCG(1, 2))
	randomDoc := func() map[string]any {
		data := map[string]any{}
		for _, f := range fields {
			v := pool[rng.IntN(len(pool))]
			if v == "missing" {
				continue
			}
			data[f] = v
		}
		doc := map[string]any{"id": "01J0", "ts": "2024-05-01T12:00:00Z"}
		switch rng.IntN(4) {
		case 0:
			doc["name"] = "order/paid"
		case 1:
			doc["name"] = "order/created"
		case 2:
			// no name
		case 3:
			doc["name"] = 1.0
		}
		switch rng.IntN(10) {
		case 0:
			// no data
		case 1:
			doc["data"] = nil
		case 2:
			doc["data"] = []any{data}
		case 3:
			doc["data"] = "scalar"
		default:
			doc["data"] = data
		}
		// Round-trip through JSON so that values look exactly like decoded
		// events.
		b, err := json.Marshal(doc)
		require.NoError(t, err)
		var out map[string]any
		require.NoError(t, json.Unmarshal(b, &out))
		return out
	}
	const n = 80
	events := make([]map[string]any, n)
	candidates := make([]map[string]any, n+1)
	for i := range n {
		events[i] = randomDoc()
		candidates[i] = randomDoc()
	}
	candidates[n] = nil // a nil candidate reads as null
	// Make sure every pool value occurs in every field of some event and
	// some candidate.
	for _, v := range pool {
		data := map[string]any{}
		if v != "missing" {
			for _, f := range fields {
				data[f] = v
			}
		}
		doc := map[string]any{"name": "order/paid", "data": data}
		events = append(events, doc)
		candidates = append(candidates, doc)
	}

	for _, pc := range programs {
		t.Run(pc.src, func(t *testing.T) {
			p, err := Compile(pc.src, EventAndAsync)
			require.NoError(t, err)
			eq, ok := p.AsyncEquality()
			require.True(t, ok)
			require.Equal(t, pc.path, eq.Path)

			var matches, indexed int
			for _, e := range events {
				key, keyOK, keyErr := eq.Value.Key(e, nil)
				for _, a := range candidates {
					match, err := p.Bool(e, a)
					if err != nil || !match {
						continue
					}
					matches++
					if keyErr != nil || !keyOK {
						continue // not indexable: the caller evaluates fully
					}
					indexed++
					leaves := Leaves(a, 1<<20)
					got, found := leaves[eq.Path]
					require.True(t, found, "event %v candidate %v: no leaf at %s (want %s)", e, a, eq.Path, key)
					require.Equal(t, key, got, "event %v candidate %v", e, a)
				}
			}
			t.Logf("%d matches, %d of them indexable", matches, indexed)
			require.Positive(t, indexed, "the property test should exercise indexable matches")
		})
	}
}

func TestEqualityString(t *testing.T) {
	p, err := Compile(`async.data.a == event.data.a + "x" && async.b == event.data.b`, EventAndAsync)
	require.NoError(t, err)
	eq, ok := p.AsyncEquality()
	require.True(t, ok)
	require.Equal(t, `async.data.a == (event.data.a + "x")`, eq.String())

	p, err = Compile(`event.data.b == async.b`, EventAndAsync)
	require.NoError(t, err)
	eq, ok = p.AsyncEquality()
	require.True(t, ok)
	require.Equal(t, `async.b == event.data.b`, eq.String())
}

func TestAsyncEqualityConcurrent(t *testing.T) {
	p, err := Compile(`event.data.orderId == async.data.orderId`, EventAndAsync)
	require.NoError(t, err)
	done := make(chan Equality)
	for range 8 {
		go func() {
			eq, _ := p.AsyncEquality()
			done <- eq
		}()
	}
	first := <-done
	for range 7 {
		eq := <-done
		require.Same(t, first.Value, eq.Value)
	}
	require.Equal(t, "data.orderId", first.Path)
}
