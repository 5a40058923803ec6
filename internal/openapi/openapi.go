// Package openapi is the OpenAPI 3.1 description of the API multiconnect
// serves, and the request validation driven by it.
//
// The document is written in parts, one YAML file per area under spec/
// (00-base.yaml holds openapi, info, security and the shared components).
// They are merged into one document at start-up: an area's routes and the
// schemas they use sit together, and engineers working on different areas
// do not edit one file. A path, schema or other component defined in two
// parts is an error, reported by Document and by the package's tests.
//
// Bodies are validated against components.schemas with
// github.com/santhosh-tekuri/jsonschema/v6: OpenAPI 3.1 schemas are JSON
// Schema 2020-12, which that library implements fully, so the document we
// serve is the validation we run and the two cannot drift apart.
package openapi

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

//go:embed spec/*.yaml
var parts embed.FS

// docURL names the assembled document inside the schema compiler.
const docURL = "https://multiconnect.invalid/openapi.json"

var (
	once     sync.Once
	doc      map[string]any
	docJSON  []byte
	compiler *jsonschema.Compiler
	loadErr  error

	schemasMu sync.Mutex
	schemas   = map[string]*jsonschema.Schema{}
)

func load() {
	doc, loadErr = assemble(parts)
	if loadErr != nil {
		return
	}
	if docJSON, loadErr = json.MarshalIndent(doc, "", "  "); loadErr != nil {
		return
	}
	// The compiler wants the JSON data model (float64 numbers, map[string]any).
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(docJSON))
	if err != nil {
		loadErr = fmt.Errorf("openapi: re-reading the assembled document: %w", err)
		return
	}
	compiler = jsonschema.NewCompiler()
	compiler.DefaultDraft(jsonschema.Draft2020)
	if err := compiler.AddResource(docURL, v); err != nil {
		loadErr = fmt.Errorf("openapi: adding the document: %w", err)
	}
}

// assemble merges every spec/*.yaml in name order into one document.
func assemble(fsys fs.FS) (map[string]any, error) {
	names, err := fs.Glob(fsys, "spec/*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := map[string]any{}
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var part map[string]any
		if err := yaml.Unmarshal(b, &part); err != nil {
			return nil, fmt.Errorf("openapi: %s: %w", name, err)
		}
		if err := merge(out, part, path.Base(name)); err != nil {
			return nil, err
		}
	}
	if out["openapi"] == nil {
		return nil, errors.New("openapi: no part sets the openapi version")
	}
	return out, nil
}

// merge copies part into into. Top-level maps (paths, components and its
// sections) are merged key by key; any other key, or a key defined twice,
// is an error naming the part.
func merge(into, part map[string]any, name string) error {
	for k, v := range part {
		switch k {
		case "paths", "webhooks":
			if err := mergeKeys(into, k, v, name, k); err != nil {
				return err
			}
		case "components":
			sections, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("openapi: %s: components is not a map", name)
			}
			comps, _ := into["components"].(map[string]any)
			if comps == nil {
				comps = map[string]any{}
				into["components"] = comps
			}
			for sec, sv := range sections {
				if err := mergeKeys(comps, sec, sv, name, "components."+sec); err != nil {
					return err
				}
			}
		default:
			if _, dup := into[k]; dup {
				return fmt.Errorf("openapi: %s sets %q, already set by an earlier part", name, k)
			}
			into[k] = v
		}
	}
	return nil
}

func mergeKeys(into map[string]any, key string, v any, name, where string) error {
	src, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("openapi: %s: %s is not a map", name, where)
	}
	dst, _ := into[key].(map[string]any)
	if dst == nil {
		dst = map[string]any{}
		into[key] = dst
	}
	for k, x := range src {
		if _, dup := dst[k]; dup {
			return fmt.Errorf("openapi: %s defines %s %q, already defined by an earlier part", name, where, k)
		}
		dst[k] = x
	}
	return nil
}

// Document is the assembled OpenAPI document as JSON, served by the gateway
// at GET /v1/openapi.json.
func Document() ([]byte, error) {
	once.Do(load)
	return docJSON, loadErr
}

// Operation is one method and path template the document describes.
type Operation struct {
	Method string // upper case
	Path   string // as in the document, e.g. /v1/media/{media-id}
}

// Operations lists every operation of the document, sorted.
func Operations() ([]Operation, error) {
	once.Do(load)
	if loadErr != nil {
		return nil, loadErr
	}
	var ops []Operation
	paths, _ := doc["paths"].(map[string]any)
	for p, item := range paths {
		m, _ := item.(map[string]any)
		for method := range m {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				ops = append(ops, Operation{Method: strings.ToUpper(method), Path: p})
			}
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].Path != ops[j].Path {
			return ops[i].Path < ops[j].Path
		}
		return ops[i].Method < ops[j].Method
	})
	return ops, nil
}

// Schema compiles (once) and returns components.schemas[name].
func Schema(name string) (*jsonschema.Schema, error) {
	once.Do(load)
	if loadErr != nil {
		return nil, loadErr
	}
	schemasMu.Lock()
	defer schemasMu.Unlock()
	if s, ok := schemas[name]; ok {
		return s, nil
	}
	s, err := compiler.Compile(docURL + "#/components/schemas/" + name)
	if err != nil {
		return nil, fmt.Errorf("openapi: compiling schema %s: %w", name, err)
	}
	schemas[name] = s
	return s, nil
}

// Invalid is a request body the document refuses, with the original API's
// error code: 1008 when a required parameter is missing, 1009 when a value
// is not valid (1025 when the body is not JSON at all).
type Invalid struct {
	Code    int
	Details string
}

func (e *Invalid) Error() string { return e.Details }

// Validate checks body (JSON) against components.schemas[name]. A nil
// result means the body conforms. An error of the document itself (a
// schema that does not compile) is returned as an *Invalid with code 1000
// so callers answer 500, never accept unchecked input.
func Validate(name string, body []byte) *Invalid { return validate(name, body, false) }

// ValidateValue checks an already decoded JSON value (from
// jsonschema.UnmarshalJSON, so numbers keep their precision) against s.
func ValidateValue(s *jsonschema.Schema, v any) *Invalid {
	return validateValue(s, v, false)
}

// ValidateMissingFirst is Validate, except that a missing field anywhere
// is reported (1008) before any bad value (1009), as the original's
// registration answered.
func ValidateMissingFirst(name string, body []byte) *Invalid { return validate(name, body, true) }

func validate(name string, body []byte, missingFirst bool) *Invalid {
	s, err := Schema(name)
	if err != nil {
		return &Invalid{Code: apierror.GenericError, Details: err.Error()}
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return &Invalid{Code: apierror.RequestNotValid, Details: "the body is not valid JSON"}
	}
	return validateValue(s, v, missingFirst)
}

func validateValue(s *jsonschema.Schema, v any, missingFirst bool) *Invalid {
	err := s.Validate(v)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return &Invalid{Code: apierror.ParameterInvalid, Details: err.Error()}
	}
	leaf := deepest(ve)
	if missingFirst {
		if m := firstRequired(ve); m != nil {
			leaf = m
		}
	}
	where := "/" + strings.Join(leaf.InstanceLocation, "/")
	if req, ok := leaf.ErrorKind.(*kind.Required); ok {
		missing := strings.Join(req.Missing, ", ")
		if where == "/" {
			return &Invalid{Code: apierror.ParameterMissing, Details: "missing required parameter: " + missing}
		}
		return &Invalid{Code: apierror.ParameterMissing, Details: fmt.Sprintf("missing required parameter at %s: %s", where, missing)}
	}
	switch k := leaf.ErrorKind.(type) {
	case *kind.FalseSchema:
		// A field a variant forbids (a caption on a sticker, say).
		return &Invalid{Code: apierror.ParameterInvalid, Details: where + ": this field is not allowed here"}
	case *kind.OneOf:
		if len(k.Subschemas) > 1 { // several alternatives matched (id and link, say)
			return &Invalid{Code: apierror.ParameterInvalid, Details: where + ": give only one of the alternatives this object allows, not several"}
		}
	}
	return &Invalid{Code: apierror.ParameterInvalid, Details: fmt.Sprintf("%s: %s", where, leaf.ErrorKind.LocalizedString(english))}
}

var english = message.NewPrinter(language.English)

// firstRequired finds a missing-field failure anywhere below e.
func firstRequired(e *jsonschema.ValidationError) *jsonschema.ValidationError {
	if _, ok := e.ErrorKind.(*kind.Required); ok {
		return e
	}
	for _, c := range e.Causes {
		if m := firstRequired(c); m != nil {
			return m
		}
	}
	return nil
}

// deepest follows the first cause down to the most specific failure, which
// names the field a client got wrong rather than "doesn't match oneOf".
func deepest(e *jsonschema.ValidationError) *jsonschema.ValidationError {
	for len(e.Causes) > 0 {
		best := e.Causes[0]
		for _, c := range e.Causes[1:] {
			if len(c.InstanceLocation) > len(best.InstanceLocation) {
				best = c
			}
		}
		e = best
	}
	return e
}
