package expr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// This file attributes evaluation failures to missing fields.
//
// A missing member reads as null (see values.go), and null is not a valid
// operand for most operations: `event.data.amount > 100` on an event
// without data.amount fails with CEL's "no such overload". Such a failure
// is expected whenever events have optional members, so it is reported as
// a *MissingFieldError, which callers can tell apart from real errors.
//
// The attribution is exact rather than guessed from error messages. Every
// planned call, attribute (field path) and comprehension of a Program is
// wrapped by a decorator, and && and || are replaced by equivalents that
// rank errors (see missingLogic). When a node fails, its wrapper
// looks at the node's operands in the checked AST: an operand that is a
// field path (an identifier followed by field selections and constant
// indexes, e.g. `event.data.amount`, `async["data"].x`, `i.qty` inside a
// comprehension) is walked again over the evaluation's input, and if the
// walk passes through a member that is not present, and no other operand
// failed by itself, the node's error is replaced by a CEL error wrapping a
// *MissingFieldError. That error then propagates (or is absorbed by && and
// ||) like any other CEL error. The places where a missing member causes a
// failure are:
//
//   - an operand of a function or operator that does not accept null
//     (`event.data.missing > 5`, `size(event.data.missing)`,
//     `event.data.missing.startsWith("a")`, `!event.data.flag`);
//   - a non-string index on a missing member (`event.data.items[0].sku`
//     without items);
//   - the range of a comprehension (`event.data.items.exists(...)` without
//     items);
//   - an operand of && or ||, or the condition of ?: (`event.data.flag &&
//     ...` without flag), which must be bool;
//   - for Program.Bool, the whole expression being such a path.
//
// A member holding JSON null is present: comparing it is an ordinary
// error. Selecting a member of a null is missing, so for
// `event.data.obj.x > 1` with "obj": null the missing field is
// event.data.obj.x.
//
// When && or || combine a missing-field error with an ordinary error from
// another operand, the ordinary error is reported, so a missing field never
// hides a real mistake in the same expression.

// MissingFieldError reports that an expression could not be evaluated
// because a field it uses is missing from the input, e.g.
// `event.data.amount > 100` on an event whose data has no amount. For a
// filter this means "does not match": Program.Bool returns false together
// with this error, and callers typically log it at Debug rather than as a
// failure. Use errors.As or IsMissingField to detect it.
type MissingFieldError struct {
	// Expr is the source text of the expression.
	Expr string
	// Field is the path of the first member that is not present, as
	// written from its variable, e.g. "event.data.amount",
	// "async.data.x", or "i.qty" for a comprehension variable i.
	// Segments that are not identifiers are written as indexes:
	// `event.data["a-b"]`, `event.data.items[0].sku`.
	Field string
}

// Error implements error.
func (e *MissingFieldError) Error() string {
	return fmt.Sprintf("expression %q: field %q is missing", e.Expr, e.Field)
}

// IsMissingField reports whether err is or wraps a *MissingFieldError and
// returns it. It is shorthand for errors.As.
func IsMissingField(err error) (*MissingFieldError, bool) {
	var mf *MissingFieldError
	if errors.As(err, &mf) {
		return mf, true
	}
	return nil, false
}

// missingTracker holds what one Program's wrappers need to attribute
// failures. It is immutable once Compile returns.
type missingTracker struct {
	src string
	// exprs holds every node of the checked AST by ID.
	exprs map[int64]ast.Expr
	// boolOperands holds the IDs of the operands of && and || and of the
	// conditions of ?:, where anything but a bool is an error.
	boolOperands map[int64]bool
	// planned maps IDs to the nodes planned so far; it is only used while
	// the Program is planned. (An attribute's ID changes each time the
	// planner adds a qualifier to it and decorates it again, so an entry
	// may be stale, but never for a complete operand.)
	planned map[int64]interpreter.InterpretableV2
}

func newMissingTracker(src string, root ast.Expr) *missingTracker {
	t := &missingTracker{
		src:          src,
		exprs:        make(map[int64]ast.Expr),
		boolOperands: make(map[int64]bool),
		planned:      make(map[int64]interpreter.InterpretableV2),
	}
	ast.PreOrderVisit(root, ast.NewExprVisitor(func(e ast.Expr) {
		t.exprs[e.ID()] = e
		if e.Kind() != ast.CallKind {
			return
		}
		call := e.AsCall()
		switch call.FunctionName() {
		case operators.LogicalAnd, operators.LogicalOr:
			for _, a := range call.Args() {
				t.boolOperands[a.ID()] = true
			}
		case operators.Conditional:
			if args := call.Args(); len(args) == 3 {
				t.boolOperands[args[0].ID()] = true
			}
		}
	}))
	return t
}

// finish drops the planning state; call it once the Program is planned.
func (t *missingTracker) finish() { t.planned = nil }

// decorate wraps the planned nodes that can fail because of a missing
// field. It is installed with cel.CustomDecoratorV2, and relies on the
// planner planning (and decorating) the operands of a node before the
// node itself.
func (t *missingTracker) decorate(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
	out := i
	switch n := i.(type) {
	case *missingAttr, *missingCall, *missingFold, *missingLogic:
		// Already wrapped: the planner decorates an attribute again each
		// time it adds a qualifier to it.
	case interpreter.InterpretableConst:
	case interpreter.InterpretableAttribute:
		out = &missingAttr{InterpretableAttribute: n, t: t}
	case interpreter.InterpretableCall:
		out = &missingCall{InterpretableCall: n, t: t}
	default:
		if e, ok := t.exprs[i.ID()]; ok {
			switch e.Kind() {
			case ast.ComprehensionKind:
				out = &missingFold{InterpretableV2: i, t: t}
			case ast.CallKind:
				call := e.AsCall()
				switch fn := call.FunctionName(); fn {
				case operators.LogicalAnd, operators.LogicalOr:
					if l := t.logic(i.ID(), fn == operators.LogicalAnd, call.Args()); l != nil {
						out = l
					}
				}
			}
		}
	}
	if t.planned != nil {
		t.planned[out.ID()] = out
	}
	return out, nil
}

// logic builds the replacement of a planned && or || from its planned
// operands, or returns nil if they cannot all be found.
func (t *missingTracker) logic(id int64, and bool, args []ast.Expr) *missingLogic {
	if t.planned == nil {
		return nil
	}
	terms := make([]interpreter.InterpretableV2, len(args))
	for i, a := range args {
		n, ok := t.planned[a.ID()]
		if !ok {
			return nil
		}
		terms[i] = n
	}
	return &missingLogic{id: id, and: and, terms: terms}
}

// errValue returns the CEL error for a missing field.
func (t *missingTracker) errValue(field string) ref.Val {
	return types.WrapErr(&MissingFieldError{Expr: t.src, Field: field})
}

// isMissingErr reports whether v is an error value made by errValue.
func isMissingErr(v ref.Val) bool {
	e, ok := v.(*types.Err)
	if !ok {
		return false
	}
	_, ok = e.Unwrap().(*MissingFieldError)
	return ok
}

// missingAttr wraps a field path (or any other attribute). It reports a
// missing field when resolving the path failed past a missing member
// (`event.data.missing[0]`), or when the path is an operand that must be a
// bool and read null because a member is missing.
type missingAttr struct {
	interpreter.InterpretableAttribute
	t *missingTracker
}

// Exec implements interpreter.InterpretableV2.
func (w *missingAttr) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	v := w.InterpretableAttribute.Exec(frame)
	switch v.(type) {
	case *types.Err:
		if isMissingErr(v) {
			return v
		}
	case types.Null:
		if !w.t.boolOperands[w.ID()] {
			return v
		}
	default:
		return v
	}
	if field, ok := missingField(frame, w.t.exprs[w.ID()]); ok {
		return w.t.errValue(field)
	}
	return v
}

// Eval implements interpreter.Interpretable.
func (w *missingAttr) Eval(act interpreter.Activation) ref.Val {
	return interpreter.EvalActivation(act, w.Exec)
}

// missingCall wraps a function or operator call. When the call fails, an
// operand is a path through a missing member, and no other operand failed
// by itself, the failure is the missing field's.
type missingCall struct {
	interpreter.InterpretableCall
	t *missingTracker
}

// Exec implements interpreter.InterpretableV2.
func (w *missingCall) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	v := w.InterpretableCall.Exec(frame)
	if _, isErr := v.(*types.Err); !isErr || isMissingErr(v) {
		return v
	}
	e, ok := w.t.exprs[w.ID()]
	if !ok || e.Kind() != ast.CallKind {
		return v
	}
	call := e.AsCall()
	operands := call.Args()
	if call.IsMemberFunction() {
		operands = append([]ast.Expr{call.Target()}, operands...)
	}
	args := w.Args()
	if len(args) != len(operands) {
		return v
	}
	field := ""
	missing := make([]bool, len(operands))
	for i, op := range operands {
		if f, ok := missingField(frame, op); ok {
			missing[i] = true
			if field == "" {
				field = f
			}
		}
	}
	if field == "" {
		return v
	}
	// An operand that fails by itself (`event.data.missing < 1/0`) is the
	// cause of the failure, not the missing field.
	for i, arg := range args {
		if !missing[i] && types.IsError(arg.Exec(frame)) {
			return v
		}
	}
	return w.t.errValue(field)
}

// Eval implements interpreter.Interpretable.
func (w *missingCall) Eval(act interpreter.Activation) ref.Val {
	return interpreter.EvalActivation(act, w.Exec)
}

// missingFold wraps a comprehension, whose range may be a path through a
// missing member (`event.data.items.exists(...)` without items).
type missingFold struct {
	interpreter.InterpretableV2
	t *missingTracker
}

// Exec implements interpreter.InterpretableV2.
func (w *missingFold) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	v := w.InterpretableV2.Exec(frame)
	if _, isErr := v.(*types.Err); !isErr || isMissingErr(v) {
		return v
	}
	e, ok := w.t.exprs[w.ID()]
	if !ok || e.Kind() != ast.ComprehensionKind {
		return v
	}
	// A range that is not a list or map makes the comprehension fail
	// before its body runs.
	if field, ok := missingField(frame, e.AsComprehension().IterRange()); ok {
		return w.t.errValue(field)
	}
	return v
}

// Eval implements interpreter.Interpretable.
func (w *missingFold) Eval(act interpreter.Activation) ref.Val {
	return interpreter.EvalActivation(act, w.Exec)
}

// missingLogic replaces the planner's && and ||. It evaluates like them
// (operands left to right, short-circuiting on false for && and true for
// ||, which absorbs errors of the other operands; otherwise an error), but
// when several operands fail it reports an ordinary error in preference
// to a missing field, so that a missing field never hides a real mistake.
type missingLogic struct {
	id    int64
	and   bool
	terms []interpreter.InterpretableV2
}

// ID implements interpreter.Interpretable.
func (n *missingLogic) ID() int64 { return n.id }

// Exec implements interpreter.InterpretableV2.
func (n *missingLogic) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	var err, missing ref.Val
	var unk *types.Unknown
	for _, term := range n.terms {
		switch v := term.Exec(frame).(type) {
		case types.Bool:
			if bool(v) != n.and {
				return v
			}
		case *types.Unknown:
			if unk == nil {
				unk = v
			} else {
				unk = types.MergeUnknowns(unk, v)
			}
		case *types.Err:
			if isMissingErr(v) {
				if missing == nil {
					missing = v
				}
			} else if err == nil {
				err = types.LabelErrNode(n.id, v)
			}
		default:
			if err == nil {
				err = types.LabelErrNode(n.id, types.MaybeNoSuchOverloadErr(v))
			}
		}
	}
	switch {
	case unk != nil:
		return unk
	case err != nil:
		return err
	case missing != nil:
		return missing
	}
	return types.Bool(n.and)
}

// Eval implements interpreter.Interpretable.
func (n *missingLogic) Eval(act interpreter.Activation) ref.Val {
	return interpreter.EvalActivation(act, n.Exec)
}

// pathStep is one selection or constant index of a field path.
type pathStep struct {
	key   string // for a field or a string index
	index int64  // for an integer index
	isKey bool
}

// missingField reports whether e is a field path (an identifier followed
// by field selections and constant string or integer indexes) that passes
// through a member not present in the input, and returns the path up to
// and including the first such member. A member of a null is not present;
// a member holding null is. Only JSON objects from the input count: a
// missing key of a map literal is not a missing field.
func missingField(act interpreter.Activation, e ast.Expr) (string, bool) {
	if e == nil {
		return "", false
	}
	var steps []pathStep // outermost first
	root := ""
walk:
	for {
		switch e.Kind() {
		case ast.SelectKind:
			sel := e.AsSelect()
			if sel.IsTestOnly() {
				return "", false
			}
			steps = append(steps, pathStep{key: sel.FieldName(), isKey: true})
			e = sel.Operand()
		case ast.CallKind:
			call := e.AsCall()
			if call.FunctionName() != operators.Index || call.IsMemberFunction() || len(call.Args()) != 2 {
				return "", false
			}
			key := call.Args()[1]
			if key.Kind() != ast.LiteralKind {
				return "", false
			}
			switch k := key.AsLiteral().(type) {
			case types.String:
				steps = append(steps, pathStep{key: string(k), isKey: true})
			case types.Int:
				steps = append(steps, pathStep{index: int64(k)})
			case types.Uint:
				if uint64(k) > 1<<62 {
					return "", false
				}
				steps = append(steps, pathStep{index: int64(k)})
			default:
				return "", false
			}
			e = call.Args()[0]
		case ast.IdentKind:
			root = e.AsIdent()
			break walk
		default:
			return "", false
		}
	}
	cur, found := act.ResolveName(root)
	if !found {
		return "", false
	}
	var path strings.Builder
	path.WriteString(root)
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		writeStep(&path, s)
		switch v := celValue(cur).(type) {
		case *jsonMap:
			if !s.isKey {
				return "", false
			}
			x, present := v.m[s.key]
			if !present {
				return path.String(), true
			}
			cur = x
		case types.Null:
			if !s.isKey {
				return "", false
			}
			return path.String(), true
		case traits.Lister:
			if s.isKey {
				return "", false
			}
			n, ok := v.Size().(types.Int)
			if !ok || s.index < 0 || s.index >= int64(n) {
				return "", false
			}
			cur = v.Get(types.Int(s.index))
		default:
			return "", false
		}
	}
	return "", false
}

// celValue turns a value met along a path into its CEL form.
func celValue(v any) ref.Val {
	switch x := v.(type) {
	case nullPath:
		return types.NullValue
	case ref.Val:
		return x
	}
	return toVal(v)
}

// writeStep renders one path step: ".name" for identifier-like keys,
// `["key"]` for other keys and "[n]" for indexes.
func writeStep(b *strings.Builder, s pathStep) {
	switch {
	case !s.isKey:
		b.WriteByte('[')
		b.WriteString(strconv.FormatInt(s.index, 10))
		b.WriteByte(']')
	case isIdent(s.key):
		b.WriteByte('.')
		b.WriteString(s.key)
	default:
		b.WriteByte('[')
		b.WriteString(strconv.Quote(s.key))
		b.WriteByte(']')
	}
}

// isIdent reports whether s can be written as a CEL field selection.
func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
		case i > 0 && '0' <= r && r <= '9':
		default:
			return false
		}
	}
	return true
}
