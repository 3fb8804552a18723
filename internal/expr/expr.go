// Package expr compiles and evaluates the CEL expressions used for event
// filters, event matching and key derivation (idempotency, concurrency).
//
// Expressions see the variable `event` and, when compiled with
// EventAndAsync, `async` (or, with EventAndOutput, `output`). They hold a
// JSON object in its decoded Go form (map[string]any with keys such as id,
// name, data and ts, and values as produced by encoding/json); `output`
// holds any decoded JSON value (a run's result), null when there is none.
//
// Semantics beyond standard CEL:
//
//   - Ints, uints and doubles compare with each other
//     (`event.data.amount > 100` with amount decoded as float64), and
//     equality is heterogeneous: `1.0 == 1` is true, and `==`/`!=` accept
//     operands of any types (values of unrelated types are unequal, so
//     `event.name == 1` compiles and is false).
//   - A missing object member reads as null instead of failing:
//     `event.data.missing == null` is true. Selecting a member of a null or
//     missing value along a field path is null too:
//     `event.data.missing.deeper == null` is true. Using null where a number
//     or string is required (`event.data.missing > 5`) is an evaluation
//     error; when the null comes from a missing member, the error is a
//     *MissingFieldError naming the expression and the field (see
//     missing.go), so that a filter on an optional field simply does not
//     match: Program.Bool returns false and the error, which callers can
//     detect with IsMissingField and log quietly.
//   - has(x.f) reports whether key f is actually present in x (a key
//     holding JSON null is present); on a null x it is false.
//   - A nil event or async map is null: `async == null` is true and
//     `async.data.x` is null.
//   - Evaluation is bounded by a cost limit and never panics; failures are
//     returned as errors.
package expr

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/env"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// Vars says which variables an expression may use.
type Vars int

const (
	// EventOnly allows only the `event` variable.
	EventOnly Vars = iota
	// EventAndAsync allows `event` and `async` (the event being matched
	// against a waiting step's triggering event).
	EventAndAsync
	// EventAndOutput allows `event` and `output` (a run's result, any
	// JSON value), for filters over runs; evaluate with BoolOutput.
	EventAndOutput
)

// String returns the name of the variable set.
func (v Vars) String() string {
	switch v {
	case EventOnly:
		return "EventOnly"
	case EventAndAsync:
		return "EventAndAsync"
	case EventAndOutput:
		return "EventAndOutput"
	}
	return "Vars(" + strconv.Itoa(int(v)) + ")"
}

// costLimit bounds the work a single evaluation may do (in CEL cost units,
// roughly one per operation or comprehension step).
const costLimit = 1_000_000

// hasFunction is the internal function the has() macro expands to. The '@'
// prefix keeps it out of reach of expression authors.
const hasFunction = "@durable_has"

var envs = sync.OnceValues(func() ([3]*cel.Env, error) {
	var out [3]*cel.Env
	for _, v := range []Vars{EventOnly, EventAndAsync, EventAndOutput} {
		e, err := newEnv(v)
		if err != nil {
			return out, fmt.Errorf("expr: building CEL environment: %w", err)
		}
		out[v] = e
	}
	return out, nil
})

func newEnv(vars Vars) (*cel.Env, error) {
	opts := []cel.EnvOption{
		cel.StdLib(cel.StdLibSubset(&env.LibrarySubset{
			ExcludeMacros:    []string{operators.Has},
			ExcludeFunctions: []*env.Function{{Name: operators.Equals}, {Name: operators.NotEquals}},
		})),
		cel.CustomTypeAdapter(adapter),
		cel.CrossTypeNumericComparisons(true),
		// Macro call tracking lets AsyncEquality turn a sub-expression
		// back into source text (see index.go).
		cel.EnableMacroCallTracking(),
		cel.Macros(cel.GlobalMacro(operators.Has, 1, expandHas)),
		cel.Function(hasFunction,
			cel.Overload("durable_has_dyn_string",
				[]*cel.Type{cel.DynType, cel.StringType}, cel.BoolType,
				cel.BinaryBinding(hasField))),
		cel.Variable("event", cel.DynType),
	}
	opts = append(opts, equalityOptions()...)
	switch vars {
	case EventAndAsync:
		opts = append(opts, cel.Variable("async", cel.DynType))
	case EventAndOutput:
		opts = append(opts, cel.Variable("output", cel.DynType))
	}
	return cel.NewCustomEnv(opts...)
}

// equalityOptions declares == and != as (dyn, dyn) -> bool, replacing the
// standard library's (A, A) -> bool. CEL's runtime equality is already
// heterogeneous (numbers are equal when they denote the same value, values
// of unrelated types are simply unequal), but the standard declaration makes
// the type checker reject `1.0 == 1` or `size(x) == 2.0`. The interpreter
// implements == and != itself; the bindings only mirror it.
func equalityOptions() []cel.EnvOption {
	args := []*cel.Type{cel.DynType, cel.DynType}
	return []cel.EnvOption{
		cel.Function(operators.Equals,
			cel.Overload("durable_equals_dyn_dyn", args, cel.BoolType,
				cel.BinaryBinding(func(a, b ref.Val) ref.Val { return types.Equal(a, b) }))),
		cel.Function(operators.NotEquals,
			cel.Overload("durable_not_equals_dyn_dyn", args, cel.BoolType,
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					if types.Equal(a, b) == types.True {
						return types.False
					}
					return types.True
				}))),
	}
}

// expandHas replaces the standard has() macro: has(x.f) becomes
// @durable_has(x, "f"). The standard expansion would ask the map whether
// key f is found, and jsonMap reports every key as found (reading as null).
func expandHas(eh cel.MacroExprFactory, _ ast.Expr, args []ast.Expr) (ast.Expr, *common.Error) {
	if args[0].Kind() != ast.SelectKind {
		return nil, eh.NewError(args[0].ID(), "invalid argument to has() macro")
	}
	sel := args[0].AsSelect()
	return eh.NewCall(hasFunction, sel.Operand(), eh.NewLiteral(types.String(sel.FieldName()))), nil
}

// Program is a compiled expression, safe for concurrent use.
type Program struct {
	src       string
	vars      Vars
	prg       cel.Program
	checked   *cel.Ast
	boolOrDyn bool

	// eqOnce guards the memoized result of AsyncEquality.
	eqOnce sync.Once
	eq     Equality
	eqOK   bool

	// miss attributes evaluation failures to missing fields.
	miss *missingTracker
}

// Compile parses and type-checks src for the given variable set. Errors
// carry CEL's position information, e.g.
// "ERROR: <input>:1:1: undeclared reference to 'async'".
func Compile(src string, vars Vars) (*Program, error) {
	if vars != EventOnly && vars != EventAndAsync && vars != EventAndOutput {
		return nil, fmt.Errorf("expr: invalid variable set %v", vars)
	}
	all, err := envs()
	if err != nil {
		return nil, err
	}
	celEnv := all[vars]
	checked, iss := celEnv.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("expr: invalid expression: %w", iss.Err())
	}
	miss := newMissingTracker(src, checked.NativeRep().Expr())
	prg, err := celEnv.Program(checked, cel.CostLimit(costLimit), cel.CustomDecoratorV2(miss.decorate))
	if err != nil {
		return nil, fmt.Errorf("expr: invalid expression %q: %w", src, err)
	}
	miss.finish()
	out := checked.OutputType()
	return &Program{
		src:       src,
		vars:      vars,
		prg:       prg,
		checked:   checked,
		boolOrDyn: out.IsExactType(types.BoolType) || out.IsExactType(types.DynType),
		miss:      miss,
	}, nil
}

// Source returns the original expression text.
func (p *Program) Source() string { return p.src }

// OutputIsBoolOrDyn reports whether the statically checked result type is
// bool or dyn, i.e. whether the expression can possibly serve as a filter.
// It is false for e.g. `"hello"` or `event.data.n + 1 == 2 ? 1 : 2`.
func (p *Program) OutputIsBoolOrDyn() bool { return p.boolOrDyn }

// Bool evaluates the program to a boolean. A result that is not a bool is
// an error, as is any evaluation error (e.g. comparing a string with a
// number). When evaluation fails because a field the expression uses is
// missing (`event.data.amount > 100` without data.amount, or
// `event.data.flag` without data.flag), Bool returns false and a
// *MissingFieldError: the filter does not match, and the caller can tell
// this expected outcome from a real error with IsMissingField. async is
// ignored for programs compiled with EventOnly.
func (p *Program) Bool(event, async map[string]any) (bool, error) {
	return p.boolOf(event, topLevel(async))
}

// BoolOutput is Bool for a program compiled with EventAndOutput: output
// is a decoded JSON value of any kind (nil is null), as encoding/json
// produces it.
func (p *Program) BoolOutput(event map[string]any, output any) (bool, error) {
	if m, ok := output.(map[string]any); ok {
		return p.boolOf(event, topLevel(m))
	}
	if output == nil {
		return p.boolOf(event, nullPath{})
	}
	return p.boolOf(event, output)
}

// boolOf evaluates to a boolean with second bound to the program's second
// variable (async or output), if it has one.
func (p *Program) boolOf(event map[string]any, second any) (bool, error) {
	v, act, err := p.evalWith(event, second)
	if err != nil {
		return false, err
	}
	b, ok := v.(types.Bool)
	if !ok {
		if _, isNull := v.(types.Null); isNull && p.checked != nil {
			if field, ok := missingField(act, p.checked.NativeRep().Expr()); ok {
				return false, &MissingFieldError{Expr: p.src, Field: field}
			}
		}
		return false, fmt.Errorf("expr: %q evaluated to %s, want bool", p.src, typeName(v))
	}
	return bool(b), nil
}

// Value evaluates the program and returns its result as a Go value: nil,
// bool, int64, uint64, float64, string, []byte, time.Time, time.Duration,
// map[string]any or []any (with elements converted likewise). Maps taken
// from the input are returned as is and must not be modified. A missing
// field read as a value is nil; a failure caused by a missing field
// (`event.data.missing + "x"`) is a *MissingFieldError, as for Bool.
func (p *Program) Value(event, async map[string]any) (any, error) {
	v, err := p.eval(event, async)
	if err != nil {
		return nil, err
	}
	out, err := toGo(v)
	if err != nil {
		return nil, fmt.Errorf("expr: converting result of %q: %w", p.src, err)
	}
	return out, nil
}

// String evaluates the program and renders the result as a key: strings
// as is, numbers in their shortest decimal form (1 rather than 1.0 for an
// integral double), bools as true or false, timestamps as RFC 3339 and
// durations in Go syntax, and anything else (null, lists, maps) as its JSON
// encoding.
func (p *Program) String(event, async map[string]any) (string, error) {
	v, err := p.Value(event, async)
	if err != nil {
		return "", err
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float64:
		return formatFloat(x), nil
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano), nil
	case time.Duration:
		return x.String(), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("expr: rendering result of %q: %w", p.src, err)
	}
	return string(b), nil
}

// activation binds the expression variables for one evaluation: event,
// and second as `async` or `output` (per vars).
type activation struct {
	event, second any
	vars          Vars
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "event":
		return a.event, true
	case "async":
		if a.vars == EventAndAsync {
			return a.second, true
		}
	case "output":
		if a.vars == EventAndOutput {
			return a.second, true
		}
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

// topLevel wraps an input object; a nil map is null.
func topLevel(m map[string]any) any {
	if m == nil {
		return nullPath{}
	}
	return &jsonMap{m: m}
}

func (p *Program) eval(event, async map[string]any) (ref.Val, error) {
	v, _, err := p.evalAct(event, async)
	return v, err
}

// evalAct evaluates the program and also returns the activation used. An
// error caused by a missing field is returned as a bare *MissingFieldError.
func (p *Program) evalAct(event, async map[string]any) (out ref.Val, act *activation, err error) {
	return p.evalWith(event, topLevel(async))
}

// evalWith is evalAct with the second variable already in its top-level
// form (see topLevel).
func (p *Program) evalWith(event map[string]any, second any) (out ref.Val, act *activation, err error) {
	if p == nil || p.prg == nil {
		return nil, nil, errors.New("expr: evaluating a nil Program")
	}
	defer func() {
		if r := recover(); r != nil {
			out, act, err = nil, nil, fmt.Errorf("expr: evaluating %q: panic: %v", p.src, r)
		}
	}()
	act = &activation{event: topLevel(event), vars: p.vars}
	if p.vars != EventOnly {
		act.second = second
	}
	v, _, err := p.prg.Eval(act)
	if err != nil {
		if mf, ok := IsMissingField(err); ok {
			return nil, nil, mf
		}
		return nil, nil, fmt.Errorf("expr: evaluating %q: %w", p.src, err)
	}
	return v, act, nil
}

func typeName(v ref.Val) string {
	if v == nil {
		return "nothing"
	}
	return v.Type().TypeName()
}

// toGo converts a CEL result into a plain Go value.
func toGo(v ref.Val) (any, error) {
	switch x := v.(type) {
	case types.Null, nullPath:
		return nil, nil
	case types.Bool:
		return bool(x), nil
	case types.Int:
		return int64(x), nil
	case types.Uint:
		return uint64(x), nil
	case types.Double:
		return float64(x), nil
	case types.String:
		return string(x), nil
	case types.Bytes:
		return []byte(x), nil
	case types.Timestamp:
		return x.Time, nil
	case types.Duration:
		return x.Duration, nil
	case *types.Type:
		return x.TypeName(), nil
	case *jsonMap:
		return x.m, nil
	case traits.Mapper:
		out := make(map[string]any)
		for it := x.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			key, err := toGo(k)
			if err != nil {
				return nil, err
			}
			ks, ok := key.(string)
			if !ok {
				ks = fmt.Sprint(key)
			}
			val, err := toGo(x.Get(k))
			if err != nil {
				return nil, err
			}
			out[ks] = val
		}
		return out, nil
	case traits.Lister:
		n, _ := x.Size().(types.Int)
		out := make([]any, 0, int(n))
		for it := x.Iterator(); it.HasNext() == types.True; {
			val, err := toGo(it.Next())
			if err != nil {
				return nil, err
			}
			out = append(out, val)
		}
		return out, nil
	case *types.Err:
		return nil, x
	}
	if v == nil {
		return nil, errors.New("no value")
	}
	return nil, fmt.Errorf("unsupported result type %s", v.Type().TypeName())
}
