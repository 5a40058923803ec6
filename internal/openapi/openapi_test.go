package openapi

import (
	"encoding/json"
	"testing"
	"testing/fstest"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

func TestDocumentAssembles(t *testing.T) {
	b, err := Document()
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d["openapi"] != "3.1.0" {
		t.Errorf("openapi = %v", d["openapi"])
	}
	// Every schema of the document compiles: a broken one would otherwise
	// surface only when its route is first called.
	comps, _ := d["components"].(map[string]any)
	schemas, _ := comps["schemas"].(map[string]any)
	for name := range schemas {
		if _, err := Schema(name); err != nil {
			t.Error(err)
		}
	}
}

func TestPartsMayNotRedefine(t *testing.T) {
	fsys := fstest.MapFS{
		"spec/00-base.yaml": {Data: []byte("openapi: 3.1.0\ncomponents:\n  schemas:\n    A: {type: string}\n")},
		"spec/10-x.yaml":    {Data: []byte("components:\n  schemas:\n    A: {type: integer}\n")},
	}
	if _, err := assemble(fsys); err == nil {
		t.Fatal("a schema defined twice was accepted")
	}
	fsys["spec/10-x.yaml"] = &fstest.MapFile{Data: []byte("paths:\n  /a: {get: {}}\n")}
	fsys["spec/20-y.yaml"] = &fstest.MapFile{Data: []byte("paths:\n  /a: {post: {}}\n")}
	if _, err := assemble(fsys); err == nil {
		t.Fatal("a path defined in two parts was accepted")
	}
}

func TestValidateCodes(t *testing.T) {
	cases := []struct {
		body string
		code int
	}{
		{`{"meta":{"api_status":"stable","version":"dev"},"errors":[{"code":1,"title":"x"}]}`, 0},
		{`{}`, apierror.ParameterMissing},
		{`{"meta":{"api_status":"stable","version":"dev"},"errors":[{"code":"x","title":"x"}]}`, apierror.ParameterInvalid},
		{`{"meta":{"api_status":"stable","version":"dev"},"errors":[{"title":"x"}]}`, apierror.ParameterMissing},
		{`{"errors":[{"code":1,"title":"x"}]}`, apierror.ParameterMissing},
		{`{"errors":`, apierror.RequestNotValid},
	}
	for _, c := range cases {
		got := Validate("Errors", []byte(c.body))
		switch {
		case c.code == 0 && got != nil:
			t.Errorf("%s: %v", c.body, got)
		case c.code != 0 && (got == nil || got.Code != c.code):
			t.Errorf("%s: got %+v, want code %d", c.body, got, c.code)
		}
	}
	if got := Validate("NoSuchSchema", []byte(`{}`)); got == nil || got.Code != apierror.GenericError {
		t.Errorf("unknown schema: %+v", got)
	}
}

// ValidateMissingFirst reports a missing field before a bad value, where
// Validate reports the most specific failure.
func TestValidateMissingFirst(t *testing.T) {
	body := []byte(`{"meta":{"api_status":1}}`) // errors missing, meta.version missing, api_status not a string
	if got := ValidateMissingFirst("Errors", body); got == nil || got.Code != apierror.ParameterMissing {
		t.Errorf("ValidateMissingFirst: %+v, want 1008", got)
	}
	if got := ValidateMissingFirst("Errors", []byte(`{"meta":{"api_status":1,"version":"v"},"errors":[{"code":1,"title":"x"}]}`)); got == nil || got.Code != apierror.ParameterInvalid {
		t.Errorf("ValidateMissingFirst with nothing missing: %+v, want 1009", got)
	}
}
