package expr

import (
	"encoding/json"
	"reflect"
	"slices"
	"strconv"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// This file holds the CEL value model for decoded JSON documents.
//
// JSON objects are exposed as *jsonMap, a traits.Mapper over map[string]any
// in which every string key that is absent (or holds a JSON null) reads as
// null instead of producing a "no such key" error.
//
// Field selection (`a.b`) and constant string indexing (`a["b"]`) are
// performed by cel-go's string qualifier, which asks the object for
// FindStringKey before falling back to the generic traits.Mapper.Find path.
// jsonMap.FindStringKey returns the same values as Find, except that an
// absent or null member yields the nullPath sentinel rather than
// types.NullValue. nullPath implements FindStringKey too (always yielding
// itself), so `a.missing.deeper.still` stays null along the attribute
// path. When the attribute path ends, the interpreter passes the result
// through the environment adapter, which turns nullPath back into
// types.NullValue; nullPath therefore never surfaces as an expression value.

// valueAdapter is the types.Adapter installed in the CEL environment. It
// wraps decoded JSON objects and arrays so that nested objects keep the
// null-for-missing behaviour, and otherwise defers to cel-go's default
// adapter.
type valueAdapter struct{}

var adapter types.Adapter = valueAdapter{}

// NativeToValue implements types.Adapter.
func (valueAdapter) NativeToValue(v any) ref.Val { return toVal(v) }

// toVal converts a decoded JSON value (or any Go value cel-go supports) into
// a CEL value.
func toVal(v any) ref.Val {
	switch x := v.(type) {
	case nil:
		return types.NullValue
	case string:
		return types.String(x)
	case float64:
		return types.Double(x)
	case bool:
		return types.Bool(x)
	case map[string]any:
		return &jsonMap{m: x}
	case []any:
		return types.NewDynamicList(adapter, x)
	case nullPath:
		return types.NullValue
	case ref.Val:
		return x
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return types.Int(i)
		}
		f, err := x.Float64()
		if err != nil {
			return types.NewErr("invalid JSON number %q", string(x))
		}
		return types.Double(f)
	case []byte:
		return types.Bytes(x)
	}
	// Slices of other element types: keep elements flowing through this
	// adapter so nested map[string]any values become jsonMaps.
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array {
		return types.NewDynamicList(adapter, v)
	}
	return types.DefaultTypeAdapter.NativeToValue(v)
}

// nullPath is the null produced by selecting a missing or null member of a
// JSON object while an attribute path (`a.b.c`) is being resolved. Selecting
// any string key on it yields nullPath again. See the file comment.
type nullPath struct{}

// ConvertToNative implements ref.Val.
func (nullPath) ConvertToNative(t reflect.Type) (any, error) {
	return types.NullValue.ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (nullPath) ConvertToType(t ref.Type) ref.Val { return types.NullValue.ConvertToType(t) }

// Equal implements ref.Val.
func (nullPath) Equal(other ref.Val) ref.Val { return types.NullValue.Equal(other) }

// Type implements ref.Val.
func (nullPath) Type() ref.Type { return types.NullType }

// Value implements ref.Val.
func (nullPath) Value() any { return types.NullValue.Value() }

// FindStringKey is consulted by cel-go's string qualifier; selection on a
// null along an attribute path stays null.
func (nullPath) FindStringKey(string) (any, bool) { return nullPath{}, true }

// jsonMap is a CEL map over a decoded JSON object in which absent keys read
// as null.
type jsonMap struct {
	m map[string]any
}

var _ traits.Mapper = (*jsonMap)(nil)

// FindStringKey is consulted by cel-go's string qualifier for `a.b` and
// `a["b"]`. Absent and null members yield nullPath (see the file comment).
func (j *jsonMap) FindStringKey(key string) (any, bool) {
	v, ok := j.m[key]
	if !ok || v == nil {
		return nullPath{}, true
	}
	return toVal(v), true
}

// Find implements traits.Mapper. A string key that is absent reads as
// (null, true); keys of other types are never present in a JSON object.
func (j *jsonMap) Find(key ref.Val) (ref.Val, bool) {
	s, ok := key.(types.String)
	if !ok {
		if types.IsUnknownOrError(key) {
			return key, false
		}
		return nil, false
	}
	v, ok := j.m[string(s)]
	if !ok {
		return types.NullValue, true
	}
	return toVal(v), true
}

// Get implements traits.Indexer.
func (j *jsonMap) Get(key ref.Val) ref.Val {
	v, found := j.Find(key)
	if !found {
		return types.ValOrErr(v, "no such key: %v", key)
	}
	return v
}

// Contains implements traits.Container: `k in m` reports whether the key is
// actually present, so it distinguishes absent keys from null ones.
func (j *jsonMap) Contains(key ref.Val) ref.Val {
	s, ok := key.(types.String)
	if !ok {
		if types.IsUnknownOrError(key) {
			return key
		}
		return types.False
	}
	_, present := j.m[string(s)]
	return types.Bool(present)
}

// Size implements traits.Sizer.
func (j *jsonMap) Size() ref.Val { return types.Int(len(j.m)) }

// Iterator implements traits.Iterable. Keys are visited in sorted order so
// that results of comprehensions over objects are deterministic.
func (j *jsonMap) Iterator() traits.Iterator {
	keys := make([]string, 0, len(j.m))
	for k := range j.m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return types.NewStringList(adapter, keys).Iterator()
}

// IsZeroValue reports whether the map is empty.
func (j *jsonMap) IsZeroValue() bool { return len(j.m) == 0 }

// Equal implements ref.Val. Two maps are equal when they have exactly the
// same keys and equal values; absent keys are not treated as null here.
func (j *jsonMap) Equal(other ref.Val) ref.Val {
	switch o := other.(type) {
	case *jsonMap:
		if len(j.m) != len(o.m) {
			return types.False
		}
		for k, v := range j.m {
			ov, ok := o.m[k]
			if !ok || types.Equal(toVal(v), toVal(ov)) != types.True {
				return types.False
			}
		}
		return types.True
	case traits.Mapper:
		if o.Size() != types.Int(len(j.m)) {
			return types.False
		}
		for k, v := range j.m {
			key := types.String(k)
			if o.Contains(key) != types.True {
				return types.False
			}
			if types.Equal(toVal(v), o.Get(key)) != types.True {
				return types.False
			}
		}
		return types.True
	default:
		return types.False
	}
}

// Type implements ref.Val.
func (j *jsonMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val; it returns the wrapped map.
func (j *jsonMap) Value() any { return j.m }

// ConvertToType implements ref.Val.
func (j *jsonMap) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return j
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", types.MapType, t)
}

// ConvertToNative implements ref.Val.
func (j *jsonMap) ConvertToNative(t reflect.Type) (any, error) {
	if t == reflect.TypeFor[map[string]any]() || t == reflect.TypeFor[any]() {
		return j.m, nil
	}
	return types.NewStringInterfaceMap(adapter, j.m).ConvertToNative(t)
}

// hasField implements the has() macro: has(x.f) expands to a call of this
// function with x and "f". It reports whether key f is present in map x, so
// it tells absent keys apart from keys holding null. has() on null (e.g. a
// missing parent object) is false.
func hasField(obj, field ref.Val) ref.Val {
	key, ok := field.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(field)
	}
	switch o := obj.(type) {
	case types.Null:
		return types.False
	case traits.Mapper:
		return o.Contains(key)
	case traits.FieldTester:
		return o.IsSet(key)
	}
	return types.NewErr("invalid argument to has(): cannot test field '%s' on a value of type '%s'",
		string(key), obj.Type().TypeName())
}

// formatFloat renders a double the way encoding/json does: the shortest
// decimal representation, without a trailing ".0" for integral values.
func formatFloat(f float64) string {
	abs := f
	if abs < 0 {
		abs = -abs
	}
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b := strconv.AppendFloat(nil, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return string(b)
}
