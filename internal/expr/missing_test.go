package expr

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMissingField(t *testing.T) {
	const data = `{
		"amount": 150, "s": "abc", "nothing": null, "flag": true,
		"obj": {"a": 1}, "items": [{"sku": "a", "qty": 1}, {"sku": "b"}],
		"a-b": 1
	}`
	tests := []struct {
		src         string
		async       string // async data; "" means a nil async
		want        bool
		wantMissing string // the missing field, if the result is a MissingFieldError
		wantErr     string // substring of an ordinary error
	}{
		// Comparisons with a missing field.
		{src: `event.data.x > 100`, wantMissing: "event.data.x"},
		{src: `event.data.x >= 1.5`, wantMissing: "event.data.x"},
		{src: `100 < event.data.x`, wantMissing: "event.data.x"},
		{src: `event.data.obj.b > 1`, wantMissing: "event.data.obj.b"},
		{src: `event.data.obj.b.c > 1`, wantMissing: "event.data.obj.b"},
		{src: `event.data.x.y.z < 1`, wantMissing: "event.data.x"},
		{src: `event.missing.amount > 1`, wantMissing: "event.missing"},
		{src: `event["data"]["x"] > 1`, wantMissing: "event.data.x"},
		{src: `event.data["x-y"] > 1`, wantMissing: `event.data["x-y"]`},
		{src: `event.data["a-b"] > 0`, want: true},
		{src: `event.data.items[1].qty > 1`, wantMissing: "event.data.items[1].qty"},
		{src: `event.data.amount > event.data.limit`, wantMissing: "event.data.limit"},
		{src: `event.data.x > event.data.y`, wantMissing: "event.data.x"},
		// Selecting a member of a null: that member is missing.
		{src: `event.data.nothing.x > 1`, wantMissing: "event.data.nothing.x"},
		// Other uses of a missing field where a value is required.
		{src: `event.data.x + 1 == 2`, wantMissing: "event.data.x"},
		{src: `size(event.data.x) > 0`, wantMissing: "event.data.x"},
		{src: `event.data.x.size() > 0`, wantMissing: "event.data.x"},
		{src: `event.data.x.startsWith("a")`, wantMissing: "event.data.x"},
		{src: `"a" in event.data.x`, wantMissing: "event.data.x"},
		{src: `int(event.data.x) == 1`, wantMissing: "event.data.x"},
		{src: `event.data.x[0] == "a"`, wantMissing: "event.data.x"},
		{src: `event.data.x[0].sku == "a"`, wantMissing: "event.data.x"},
		{src: `event.data.x.exists(i, i == 1)`, wantMissing: "event.data.x"},
		{src: `event.data.x.all(i, i == 1)`, wantMissing: "event.data.x"},
		{src: `event.data.x.map(i, i).size() == 0`, wantMissing: "event.data.x"},
		// Comprehension variables: the path is written from the variable.
		{src: `event.data.items.exists(i, i.qty > 2)`, wantMissing: "i.qty"},
		{src: `event.data.items.exists(i, i.qty >= 1)`, want: true},
		{src: `event.data.items.all(i, i.qty > 0)`, wantMissing: "i.qty"},
		{src: `event.data.items.filter(i, i.qty > 0).size() == 1`, wantMissing: "i.qty"},
		{src: `event.data.items.exists(i, i.sku == "b" && i.qty == null)`, want: true},
		// Missing bools used as conditions.
		{src: `event.data.x`, wantMissing: "event.data.x"},
		{src: `!event.data.x`, wantMissing: "event.data.x"},
		{src: `event.data.x && event.data.flag`, wantMissing: "event.data.x"},
		{src: `event.data.flag || event.data.x`, want: true},
		{src: `event.data.x || event.data.flag`, want: true},
		{src: `event.data.x ? true : false`, wantMissing: "event.data.x"},
		// && and ||: CEL absorbs the error when the other operand decides.
		{src: `event.data.x > 100 && event.data.amount > 100`, wantMissing: "event.data.x"},
		{src: `event.data.amount > 100 && event.data.x > 100`, wantMissing: "event.data.x"},
		{src: `event.data.x > 100 && event.data.amount > 1000`, want: false},
		{src: `event.data.x > 100 || event.data.amount > 100`, want: true},
		{src: `event.data.x > 100 || event.data.amount > 1000`, wantMissing: "event.data.x"},
		{src: `event.data.x > 100 || event.data.y > 100`, wantMissing: "event.data.x"},
		{src: `(event.data.x > 1 || event.data.y > 1) && event.data.amount > 1`, wantMissing: "event.data.x"},
		{src: `!(event.data.x > 100)`, wantMissing: "event.data.x"},
		{src: `has(event.data.x) && event.data.x > 100`, want: false},
		{src: `!has(event.data.x) || event.data.x > 100`, want: true},
		// Equality with a missing field is not an error.
		{src: `event.data.x == "a"`, want: false},
		{src: `event.data.x != "a"`, want: true},
		{src: `event.data.x == null`, want: true},
		{src: `event.data.x in ["a", "b"]`, want: false},
		{src: `event.data.x.y == 1`, want: false},
		// Ordinary errors stay ordinary.
		{src: `event.data.s > 5`, wantErr: "no such overload"},
		{src: `event.data.s > event.data.amount`, wantErr: "no such overload"},
		{src: `event.data.nothing > 5`, wantErr: "no such overload"},
		{src: `event.data.nothing`, wantErr: "want bool"},
		{src: `event.data.s`, wantErr: "want bool"},
		{src: `int(event.data.amount) / 0 == 1`, wantErr: "division by zero"},
		{src: `event.data.x < 1 / 0`, wantErr: "division by zero"},
		{src: `event.data.items[5].qty > 1`, wantErr: "index out of bounds"},
		{src: `event.data.s.x > 1`, wantErr: "no such key"},
		{src: `{"a": 1}.b > 0`, wantErr: "no such key"},
		{src: `event.data.nothing[0] == 1`, wantErr: "no such key"},
		{src: `event.data.amount.exists(i, i == 1)`, wantErr: "expected iterable type"},
		// A real error is preferred to a missing field in && and ||.
		{src: `event.data.x > 5 || event.data.s > 5`, wantErr: "no such overload"},
		{src: `event.data.s > 5 || event.data.x > 5`, wantErr: "no such overload"},
		{src: `event.data.x > 5 && event.data.s > 5`, wantErr: "no such overload"},
		{src: `event.data.x > 5 || event.data.s`, wantErr: "no such overload"},
		{src: `event.data.items.exists(i, i.qty > 5 || i.sku > 5)`, wantErr: "no such overload"},
		// async.
		{src: `async.data.x > 1`, async: `{}`, wantMissing: "async.data.x"},
		{src: `event.data.amount == async.data.amount && async.data.x > 1`, async: `{"amount": 150}`, wantMissing: "async.data.x"},
		{src: `async.data.x > 1`, wantMissing: "async.data"},
		{src: `async.data.x == event.data.x`, async: `{}`, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			p, err := Compile(tc.src, EventAndAsync)
			require.NoError(t, err)
			var async map[string]any
			if tc.async != "" {
				async = ev(t, tc.async)
			}
			got, err := p.Bool(ev(t, data), async)
			switch {
			case tc.wantMissing != "":
				require.Equal(t, &MissingFieldError{Expr: tc.src, Field: tc.wantMissing}, err)
				require.False(t, got)
			case tc.wantErr != "":
				require.ErrorContains(t, err, tc.wantErr)
				_, isMissing := IsMissingField(err)
				require.False(t, isMissing, "%v", err)
				var mf *MissingFieldError
				require.False(t, errors.As(err, &mf))
				require.False(t, got)
			default:
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			}
		})
	}
}

func TestMissingFieldErrorAPI(t *testing.T) {
	p, err := Compile(`event.data.amount > 100`, EventOnly)
	require.NoError(t, err)
	ok, err := p.Bool(ev(t, `{}`), nil)
	require.False(t, ok)
	require.EqualError(t, err, `expression "event.data.amount > 100": field "event.data.amount" is missing`)

	// Detectable through wrapping, with errors.As or IsMissingField.
	wrapped := fmt.Errorf("trigger filter: %w", err)
	mf, isMissing := IsMissingField(wrapped)
	require.True(t, isMissing)
	require.Equal(t, "event.data.amount > 100", mf.Expr)
	require.Equal(t, "event.data.amount", mf.Field)
	var target *MissingFieldError
	require.True(t, errors.As(wrapped, &target))
	require.Same(t, mf, target)

	_, isMissing = IsMissingField(errors.New("other"))
	require.False(t, isMissing)
	_, isMissing = IsMissingField(nil)
	require.False(t, isMissing)

	// Present again: no error.
	ok, err = p.Bool(ev(t, `{"amount": 150}`), nil)
	require.NoError(t, err)
	require.True(t, ok)

	// Value, String and Key report missing fields the same way.
	p, err = Compile(`event.data.userId + "-" + event.data.orgId`, EventOnly)
	require.NoError(t, err)
	e := ev(t, `{"userId": "u1"}`)
	_, err = p.Value(e, nil)
	require.Equal(t, &MissingFieldError{Expr: p.Source(), Field: "event.data.orgId"}, err)
	_, err = p.String(e, nil)
	require.Equal(t, &MissingFieldError{Expr: p.Source(), Field: "event.data.orgId"}, err)
	_, _, err = p.Key(e, nil)
	require.Equal(t, &MissingFieldError{Expr: p.Source(), Field: "event.data.orgId"}, err)
	// A missing field read as a value is simply null.
	p, err = Compile(`event.data.orgId`, EventOnly)
	require.NoError(t, err)
	v, err := p.Value(e, nil)
	require.NoError(t, err)
	require.Nil(t, v)
}

// TestMissingFieldConcurrent checks that programs shared through a Cache report
// missing fields correctly under concurrent use.
func TestMissingFieldConcurrent(t *testing.T) {
	var c Cache
	p, err := c.Compile(`event.data.items.exists(i, i.qty > 2) && event.data.amount > 1`, EventOnly)
	require.NoError(t, err)
	withQty := ev(t, `{"amount": 5, "items": [{"qty": 3}]}`)
	without := ev(t, `{"amount": 5, "items": [{"sku": "a"}]}`)
	errs := make(chan error, 8)
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 300 {
				if (g+i)%2 == 0 {
					ok, err := p.Bool(withQty, nil)
					if err != nil || !ok {
						errs <- fmt.Errorf("with qty: %v %v", ok, err)
						return
					}
					continue
				}
				ok, err := p.Bool(without, nil)
				mf, isMissing := IsMissingField(err)
				if ok || !isMissing || mf.Field != "i.qty" {
					errs <- fmt.Errorf("without qty: %v %v", ok, err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
