package openapi

import (
	"regexp"
	"strings"
	"testing"
)

var pathParam = regexp.MustCompile(`\{([^}/]+)\}`)

// Every operation says how it compares with the original and carries
// cases the conformance walker can send: at least one valid and one
// refused, each naming every path parameter and expecting an answer the
// operation describes. (The walker itself runs them
// against a cluster; this finds a mistake in a part without one.)
func TestEveryOperationIsDescribed(t *testing.T) {
	ops, err := Operations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) == 0 {
		t.Fatal("the document describes no operation")
	}
	for _, op := range ops {
		on, err := OnPrem(op)
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := strings.CutPrefix(on, "different: "); on != "original" && (!ok || strings.TrimSpace(d) == "") {
			t.Errorf("%s %s: x-onprem %q: want original or \"different: <what differs>\"", op.Method, op.Path, on)
		}
		cases, err := Cases(op)
		if err != nil {
			t.Error(err)
			continue
		}
		var valid, invalid bool
		for _, c := range cases {
			valid = valid || (c.Status >= 200 && c.Status < 400)
			invalid = invalid || c.Status >= 400
			if c.Name == "" {
				t.Errorf("%s %s: a case without a name", op.Method, op.Path)
			}
			for _, m := range pathParam.FindAllStringSubmatch(op.Path, -1) {
				if _, ok := c.Params[m[1]]; !ok {
					t.Errorf("%s %s: case %q gives no value for {%s}", op.Method, op.Path, c.Name, m[1])
				}
			}
			// Every answer a case expects is one the operation describes.
			if _, err := ResponseMediaTypes(op, c.Status); err != nil {
				t.Errorf("%s %s: case %q: %v", op.Method, op.Path, c.Name, err)
			} else if c.Status >= 200 && c.Status < 300 {
				if _, _, err := ResponseSchema(op, c.Status); err != nil {
					t.Errorf("%s %s: case %q: %v", op.Method, op.Path, c.Name, err)
				}
			}
		}
		if !valid || !invalid {
			t.Errorf("%s %s: x-conformance needs a valid and a refused case (valid %v, refused %v)", op.Method, op.Path, valid, invalid)
		}
	}
	ns, err := NotServedOperations()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.Method == "" || n.Path == "" || n.Why == "" {
			t.Errorf("x-not-served entry %+v lacks method, path or why", n)
		}
	}
}
