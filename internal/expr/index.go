package expr

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
)

// This file supports indexed matching of incoming events against stored
// waits.
//
// A wait condition such as `event.data.orderId == async.data.orderId` is
// compiled with EventAndAsync. Its `event` (the waiting run's trigger) is
// known when the wait is stored, so the condition implies
// `async.data.orderId == <value>` for a value computable up front. The
// caller stores the path ("data.orderId") and Key of that value next to the
// wait, and probes the store with Leaves of each incoming event. Because a
// true condition implies a matching (path, key) pair, the probe never misses
// a match; it may return false positives, which the caller removes by
// evaluating the full condition.
//
// Index keys
//
// A key renders a JSON scalar together with its kind, so that values CEL
// considers unequal across kinds (the string "1" and the number 1) get
// different keys:
//
//   - strings: "s:" followed by the string itself ("s:o-123");
//   - numbers: "n:" followed by the shortest decimal form of the number as a
//     float64, formatted like Program.String formats doubles ("n:1" for
//     both 1 and 1.0, "n:1.5", "n:1e+21"); -0 renders as "n:0";
//   - bools: "b:true" and "b:false".
//
// Null, objects and lists have no key. Numbers are keyed by their float64
// value because CEL compares ints and uints with doubles by converting them
// to double: an int 9007199254740993 equals the JSON number
// 9007199254740992, so both must share a key. (Two distinct ints beyond
// 2^53 may therefore share a key; that is only a false positive. For such
// ints the key also differs from Program.String, which prints them
// exactly.)

// Equality is a top-level conjunct of a filter of the form
// async.<path> == <expr> (either operand order), where <expr> does not use
// async.
type Equality struct {
	// Path is the dotted member path under async, e.g. "data.orderId".
	// Each segment is an object key reached by field selection
	// (async.data.orderId) or constant string indexing
	// (async["data"]["orderId"]); segments are never empty and never
	// contain ".". List indexing is never part of a Path.
	Path string
	// Value is the other operand, compiled with EventOnly. Evaluate it with
	// Key(event, nil) to obtain the index key to store for the wait.
	Value *Program
}

// AsyncEquality returns an indexable equality implied by the program: a
// top-level conjunct (the whole expression, or one operand of a chain of
// &&) of the form async.<path> == <expr> or <expr> == async.<path>, where
// <expr> does not mention async. When several conjuncts qualify, the first
// one (in source order) is returned. ok is false when there is none, e.g.
// for ||, !=, async on both sides, list indexing on the async side
// (async.data.items[0]) or a function call on the async side
// (size(async.data.x) == 1).
//
// The result guarantees: for any event E and candidate A, if the program's
// Bool(E, A) is true and eq.Value.Key(E, nil) returns (k, true, nil), then
// Leaves(A, n)[eq.Path] == k for any n not smaller than the number of
// scalar leaves of A. When Key reports false or an error (e.g. the value
// is null, a map or a list, which a missing async member could equal), the
// caller must not index the wait and must evaluate it against every
// candidate instead.
//
// The result is computed once per Program and shared; it is safe for
// concurrent use.
func (p *Program) AsyncEquality() (eq Equality, ok bool) {
	if p == nil || p.checked == nil || p.vars != EventAndAsync {
		return Equality{}, false
	}
	p.eqOnce.Do(func() {
		defer func() {
			// Never let an unexpected AST shape take the caller down; no
			// equality is always a safe answer.
			if r := recover(); r != nil {
				p.eq, p.eqOK = Equality{}, false
			}
		}()
		p.eq, p.eqOK = findAsyncEquality(p.checked)
	})
	return p.eq, p.eqOK
}

// findAsyncEquality scans the top-level conjuncts of a checked AST.
func findAsyncEquality(checked *cel.Ast) (Equality, bool) {
	native := checked.NativeRep()
	info := native.SourceInfo()
	for _, c := range conjuncts(native.Expr(), nil) {
		if c.Kind() != ast.CallKind {
			continue
		}
		call := c.AsCall()
		if call.FunctionName() != operators.Equals || call.IsMemberFunction() || len(call.Args()) != 2 {
			continue
		}
		args := call.Args()
		for _, side := range [2]int{0, 1} {
			path, ok := asyncPath(args[side])
			if !ok {
				continue
			}
			other := args[1-side]
			if mentionsAsync(other) {
				break
			}
			src, err := cel.ExprToString(other, info)
			if err != nil {
				break
			}
			// Compiling with EventOnly also proves that the operand does
			// not depend on async.
			value, err := Compile(src, EventOnly)
			if err != nil {
				break
			}
			return Equality{Path: path, Value: value}, true
		}
	}
	return Equality{}, false
}

// conjuncts appends the operands of a (possibly nested) chain of && to out,
// left to right; any other expression is a single conjunct.
func conjuncts(e ast.Expr, out []ast.Expr) []ast.Expr {
	if e.Kind() == ast.CallKind {
		call := e.AsCall()
		if call.FunctionName() == operators.LogicalAnd && !call.IsMemberFunction() {
			for _, arg := range call.Args() {
				out = conjuncts(arg, out)
			}
			return out
		}
	}
	return append(out, e)
}

// asyncPath reports whether e is a member path rooted at the variable
// async, built from field selections and constant string indexes only, and
// returns the path joined with ".".
func asyncPath(e ast.Expr) (string, bool) {
	var segs []string
	for {
		switch e.Kind() {
		case ast.SelectKind:
			sel := e.AsSelect()
			if sel.IsTestOnly() {
				return "", false
			}
			segs = append(segs, sel.FieldName())
			e = sel.Operand()
			continue
		case ast.CallKind:
			call := e.AsCall()
			if call.FunctionName() != operators.Index || call.IsMemberFunction() || len(call.Args()) != 2 {
				return "", false
			}
			key := call.Args()[1]
			if key.Kind() != ast.LiteralKind {
				return "", false
			}
			s, ok := key.AsLiteral().(types.String)
			if !ok {
				return "", false
			}
			segs = append(segs, string(s))
			e = call.Args()[0]
			continue
		case ast.IdentKind:
			if e.AsIdent() != "async" || len(segs) == 0 {
				return "", false
			}
		default:
			return "", false
		}
		break
	}
	for _, s := range segs {
		if !pathSegmentOK(s) {
			return "", false
		}
	}
	slices.Reverse(segs)
	return strings.Join(segs, "."), true
}

// pathSegmentOK reports whether an object key can be part of an index path:
// it must be non-empty and must not contain the separator.
func pathSegmentOK(s string) bool { return s != "" && !strings.Contains(s, ".") }

// mentionsAsync reports whether the identifier async occurs anywhere in e.
// (It errs on the safe side for comprehension variables named async.)
func mentionsAsync(e ast.Expr) bool {
	found := false
	ast.PreOrderVisit(e, ast.NewExprVisitor(func(x ast.Expr) {
		if x.Kind() == ast.IdentKind && x.AsIdent() == "async" {
			found = true
		}
	}))
	return found
}

// Key evaluates the program and renders the result as an index key (see
// KeyOf). ok is false, with a nil error, when the result has no key: null,
// maps, lists, bytes, timestamps, durations and types. In particular a
// null result is not indexable, because a missing async member also reads
// as null; the caller must then evaluate the wait against every candidate.
func (p *Program) Key(event, async map[string]any) (string, bool, error) {
	v, err := p.Value(event, async)
	if err != nil {
		return "", false, err
	}
	k, ok := KeyOf(v)
	return k, ok, nil
}

// KeyOf renders a scalar value as an index key: "s:" + the string for
// strings, "n:" + the shortest decimal form of the float64 value for
// numbers (1 and 1.0 are both "n:1"; see the file comment for large
// integers), "b:true" or "b:false" for bools. It accepts the values of
// decoded JSON (string, float64, bool, json.Number) as well as Go integer
// and float types and the results of Program.Value. ok is false for nil
// (JSON null), maps, lists, []byte, time.Time, time.Duration and any other
// type.
func KeyOf(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return "s:" + x, true
	case bool:
		if x {
			return "b:true", true
		}
		return "b:false", true
	case float64:
		return numberKey(x), true
	case int64:
		return numberKey(float64(x)), true
	case uint64:
		return numberKey(float64(x)), true
	case time.Time, time.Duration:
		// CEL timestamps and durations never equal a JSON value.
		return "", false
	case json.Number:
		// Mirror toVal: integral numbers become CEL ints, others doubles.
		if i, err := x.Int64(); err == nil {
			return numberKey(float64(i)), true
		}
		f, err := x.Float64()
		if err != nil {
			return "", false
		}
		return numberKey(f), true
	}
	// Other Go scalar kinds (int, float32, named string types...), which
	// cel-go's default adapter turns into the corresponding CEL values.
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String:
		return KeyOf(rv.String())
	case reflect.Bool:
		return KeyOf(rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return numberKey(float64(rv.Int())), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return numberKey(float64(rv.Uint())), true
	case reflect.Float32, reflect.Float64:
		return numberKey(rv.Float()), true
	}
	return "", false
}

// numberKey renders a number key. -0 and 0 are equal in CEL and share a
// key.
func numberKey(f float64) string {
	if f == 0 {
		f = 0
	}
	if math.IsNaN(f) {
		// NaN equals nothing; any stable rendering will do.
		return "n:NaN"
	}
	return "n:" + formatFloat(f)
}

// Leaves flattens a decoded JSON object into a map from path to index key
// (see KeyOf) for every scalar leaf reachable through objects only (never
// through lists). Paths join object keys with "."; keys that are empty or
// contain "." are skipped together with everything below them, as are
// null leaves. Members are visited depth-first in sorted key order, and at
// most max leaves are collected (none when max <= 0), so a capped result
// is deterministic. For example
//
//	{"data":{"orderId":"o-1","n":2,"tags":["a"]}, "name":"x"}
//
// yields {"data.orderId":"s:o-1", "data.n":"n:2", "name":"s:x"}.
func Leaves(obj map[string]any, max int) map[string]string {
	out := make(map[string]string)
	if max <= 0 {
		return out
	}
	var walk func(prefix string, m map[string]any) bool
	walk = func(prefix string, m map[string]any) bool {
		keys := make([]string, 0, len(m))
		for k := range m {
			if pathSegmentOK(k) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			path := k
			if prefix != "" {
				path = prefix + "." + k
			}
			switch v := m[k].(type) {
			case map[string]any:
				if !walk(path, v) {
					return false
				}
			case []any:
				// Lists are not indexable.
			default:
				key, ok := KeyOf(v)
				if !ok {
					continue
				}
				out[path] = key
				if len(out) >= max {
					return false
				}
			}
		}
		return true
	}
	walk("", obj)
	return out
}

// String returns a readable form of the equality, e.g.
// `async.data.orderId == event.data.orderId`.
func (e Equality) String() string {
	if e.Value == nil {
		return fmt.Sprintf("async.%s == <nil>", e.Path)
	}
	src := e.Value.Source()
	if strings.ContainsAny(src, " \t\n") {
		src = "(" + src + ")"
	}
	return fmt.Sprintf("async.%s == %s", e.Path, src)
}
