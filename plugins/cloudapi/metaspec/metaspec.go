// Package metaspec validates Graph API requests and webhook payloads against
// Meta's published OpenAPI 3.1 description of the WhatsApp Cloud API
// (business-messaging-api_v23.0.yaml, embedded; see SOURCE.md and LICENSE).
// The Graph API test server (graphtest) refuses whatever does not fit, so
// the transport's tests cannot drift into agreeing with themselves.
//
// Schemas are validated with github.com/santhosh-tekuri/jsonschema/v6 (JSON
// Schema 2020-12, which OpenAPI 3.1 schemas are), the library the rest of
// the project validates with. A full OpenAPI library (pb33f/libopenapi-
// validator) was not used: it validates a discriminated oneOf as a plain
// oneOf, and the description needs the fixes below applied to its schema
// tree before any validator can take it; jsonschema/v6 compiles the fixed
// tree directly. Operations are matched here from the description's paths,
// methods and parameters; bodies, parameters and webhooks are validated by
// the library against the description's own schemas.
//
// The description's known gaps (SOURCE.md) are fixed when it is loaded:
//   - allOf branches carrying additionalProperties:false are read as
//     unevaluatedProperties:false on the whole allOf;
//   - a oneOf with a discriminator mapping is validated against the mapped
//     schema only (if/then on the discriminator's value);
//   - biz_opaque_callback_data (string, at most 512 characters) is allowed
//     on messages;
//   - a read receipt (status "read", message_id, optional
//     typing_indicator), which the description shows as an example of the
//     messages operation but leaves out of its schema, is accepted there;
//   - the webhook schemas refer to the outgoing message schemas of the same
//     name (a bundling slip): they are pointed at their own;
//   - template language policy is optional, a button index is 0 to 9, and a
//     location's coordinates may be numbers (as Meta's examples have them).
//
// recipient_type stays required, as the description says: the transport
// always sends it.
package metaspec

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed business-messaging-api_v23.0.yaml
var description []byte

// docURL names the fixed document inside the schema compiler.
const docURL = "https://metaspec.invalid/business-messaging-api_v23.0.json"

// WebhookPath is the description's path for webhook payloads.
const WebhookPath = "/whatsapp/webhooks"

var english = message.NewPrinter(language.English)

// Spec is the loaded, fixed description with its compiled schemas.
type Spec struct {
	doc      map[string]any
	compiler *jsonschema.Compiler
	ops      []*operation

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema // by JSON pointer
	webhook *jsonschema.Schema
}

type operation struct {
	method   string
	template string
	segments []string // "{Name}" for a parameter
	literals int
	params   []parameter
	body     map[string]string // media type → JSON pointer of its schema
	required bool              // the body is required
}

type parameter struct {
	name, in string
	required bool
	schema   string // JSON pointer
	kind     string // the schema's type, to read a string as it
}

var (
	once      sync.Once
	loaded    *Spec
	loadError error
)

// Default is the embedded description, loaded and fixed on first use.
func Default() (*Spec, error) {
	once.Do(func() { loaded, loadError = Load(description) })
	return loaded, loadError
}

// ValidateRequest checks r (its body already read into body) against the
// default description's operation for its method and path.
func ValidateRequest(r *http.Request, body []byte) error {
	s, err := Default()
	if err != nil {
		return err
	}
	return s.ValidateRequest(r, body)
}

// ValidateWebhook checks a webhook payload against the description's
// webhook schema.
func ValidateWebhook(body []byte) error {
	s, err := Default()
	if err != nil {
		return err
	}
	return s.ValidateWebhook(body)
}

// Load parses a description, applies the fixes and prepares its operations.
func Load(yamlText []byte) (*Spec, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(yamlText, &root); err != nil {
		return nil, fmt.Errorf("metaspec: parsing the description: %w", err)
	}
	var raw any
	if err := root.Decode(&raw); err != nil {
		return nil, fmt.Errorf("metaspec: reading the description: %w", err)
	}
	doc, ok := normalize(raw).(map[string]any)
	if !ok {
		return nil, errors.New("metaspec: the description is not a mapping")
	}
	if err := fix(doc, schemaOrder(&root)); err != nil {
		return nil, err
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("metaspec: encoding the fixed description: %w", err)
	}
	// The compiler wants the JSON data model (json.Number, map[string]any).
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return nil, fmt.Errorf("metaspec: re-reading the fixed description: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(docURL, v); err != nil {
		return nil, fmt.Errorf("metaspec: adding the description: %w", err)
	}
	s := &Spec{doc: doc, compiler: c, schemas: map[string]*jsonschema.Schema{}}
	if err := s.readOperations(); err != nil {
		return nil, err
	}
	return s, nil
}

// schemaOrder lists components.schemas' names in the file's order (the
// webhook fix needs to know which part of the bundled file a schema is in).
func schemaOrder(root *yaml.Node) []string {
	find := func(n *yaml.Node, key string) *yaml.Node {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
		return nil
	}
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	schemas := find(find(root, "components"), "schemas")
	if schemas == nil {
		return nil
	}
	var names []string
	for i := 0; i+1 < len(schemas.Content); i += 2 {
		names = append(names, schemas.Content[i].Value)
	}
	return names
}

// normalize turns YAML's decoded values into JSON's (string keys only).
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	}
	return v
}

// pointer escapes path parts into a JSON pointer.
func pointer(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(p))
	}
	return b.String()
}

// resolve follows a local $ref ("#/a/b") to its target and pointer.
func (s *Spec) resolve(v map[string]any, at string) (map[string]any, string) {
	for i := 0; i < 16; i++ {
		ref, ok := v["$ref"].(string)
		if !ok || !strings.HasPrefix(ref, "#/") {
			return v, at
		}
		at = ref[1:]
		var cur any = s.doc
		for _, p := range strings.Split(ref[2:], "/") {
			p = strings.NewReplacer("~1", "/", "~0", "~").Replace(p)
			m, _ := cur.(map[string]any)
			cur = m[p]
		}
		next, ok := cur.(map[string]any)
		if !ok {
			return v, at
		}
		v = next
	}
	return v, at
}

var methods = []string{"get", "put", "post", "delete", "patch", "head", "options"}

func (s *Spec) readOperations() error {
	paths, _ := s.doc["paths"].(map[string]any)
	for tmpl, pv := range paths {
		item, _ := pv.(map[string]any)
		pathParams, _ := item["parameters"].([]any)
		for _, m := range methods {
			ov, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			op := &operation{method: strings.ToUpper(m), template: tmpl, body: map[string]string{}}
			for _, seg := range strings.Split(strings.Trim(tmpl, "/"), "/") {
				op.segments = append(op.segments, seg)
				if !strings.HasPrefix(seg, "{") {
					op.literals++
				}
			}
			// Operation parameters override path-item ones of the same name and place.
			seen := map[string]bool{}
			opParams, _ := ov["parameters"].([]any)
			for i, list := range [][]any{opParams, pathParams} {
				where := pointer("paths", tmpl, m, "parameters")
				if i == 1 {
					where = pointer("paths", tmpl, "parameters")
				}
				for j, e := range list {
					pm, _ := e.(map[string]any)
					pm, at := s.resolve(pm, where+"/"+strconv.Itoa(j))
					name, _ := pm["name"].(string)
					in, _ := pm["in"].(string)
					if name == "" || seen[in+" "+strings.ToLower(name)] {
						continue
					}
					seen[in+" "+strings.ToLower(name)] = true
					req, _ := pm["required"].(bool)
					p := parameter{name: name, in: in, required: req || in == "path"}
					if sch, ok := pm["schema"].(map[string]any); ok {
						p.schema = at + "/schema"
						r, _ := s.resolve(sch, p.schema)
						p.kind, _ = r["type"].(string)
					}
					op.params = append(op.params, p)
				}
			}
			if rb, ok := ov["requestBody"].(map[string]any); ok {
				rb, at := s.resolve(rb, pointer("paths", tmpl, m, "requestBody"))
				op.required, _ = rb["required"].(bool)
				content, _ := rb["content"].(map[string]any)
				for mt, cv := range content {
					if cm, ok := cv.(map[string]any); ok && cm["schema"] != nil {
						op.body[mt] = at + pointer("content", mt, "schema")
					}
				}
			}
			s.ops = append(s.ops, op)
		}
	}
	// Most literal segments first; among equals, the Cloud API's phone
	// number and media operations first (their errors are the useful ones
	// when a path fits several templates).
	rank := func(t string) int {
		switch {
		case strings.Contains(t, "{Phone-Number-ID}"):
			return 0
		case strings.Contains(t, "{Media-ID}"):
			return 1
		}
		return 2
	}
	sort.SliceStable(s.ops, func(i, j int) bool {
		a, b := s.ops[i], s.ops[j]
		if a.literals != b.literals {
			return a.literals > b.literals
		}
		if rank(a.template) != rank(b.template) {
			return rank(a.template) < rank(b.template)
		}
		return a.template < b.template
	})
	return nil
}

// schema compiles (once) the schema at a JSON pointer of the document.
func (s *Spec) schema(ptr string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch, ok := s.schemas[ptr]; ok {
		return sch, nil
	}
	sch, err := s.compiler.Compile(docURL + "#" + ptr)
	if err != nil {
		return nil, fmt.Errorf("metaspec: compiling %s: %w", ptr, err)
	}
	s.schemas[ptr] = sch
	return sch, nil
}

// Operation names the description's operation a request matched.
type Operation struct {
	Method, Path string            // Path is the template, e.g. /{Version}/{Phone-Number-ID}/messages
	Params       map[string]string // the path's parameters
}

// Match finds the operations whose method and path template fit, best first.
func (s *Spec) Match(method, path string) []Operation {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var out []Operation
	for _, op := range s.ops {
		if op.method != method || len(op.segments) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, seg := range op.segments {
			if strings.HasPrefix(seg, "{") {
				if segs[i] == "" {
					ok = false
					break
				}
				params[strings.Trim(seg, "{}")] = segs[i]
			} else if seg != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, Operation{Method: method, Path: op.template, Params: params})
		}
	}
	return out
}

// ValidateRequest checks r against the operations its method and path fit:
// it fits when it fits one of them (Graph paths such as /{Version}/{id}
// fit many templates; OpenAPI leaves such ambiguity to the server).
func (s *Spec) ValidateRequest(r *http.Request, body []byte) error {
	cands := s.Match(r.Method, r.URL.Path)
	if len(cands) == 0 {
		return fmt.Errorf("%s %s: no operation of the description has this method and path", r.Method, r.URL.Path)
	}
	var first error
	for _, c := range cands {
		err := s.ValidateOperation(c.Path, r, body)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if len(cands) > 1 {
		return fmt.Errorf("%w (and %d other operations on this path do not fit either)", first, len(cands)-1)
	}
	return first
}

// ValidateOperation checks r against the operation with the given path
// template (as in the description) and r's method.
func (s *Spec) ValidateOperation(template string, r *http.Request, body []byte) error {
	var op *operation
	for _, o := range s.ops {
		if o.template == template && o.method == r.Method {
			op = o
			break
		}
	}
	if op == nil {
		return fmt.Errorf("%s %s: the description has no such operation", r.Method, template)
	}
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(segs) != len(op.segments) {
		return fmt.Errorf("%s %s: the path does not fit %s", r.Method, r.URL.Path, template)
	}
	name := r.Method + " " + template
	pathValues := map[string]string{}
	for i, seg := range op.segments {
		if strings.HasPrefix(seg, "{") {
			pathValues[strings.Trim(seg, "{}")] = segs[i]
		} else if seg != segs[i] {
			return fmt.Errorf("%s %s: the path does not fit %s", r.Method, r.URL.Path, template)
		}
	}
	query := r.URL.Query()
	for _, p := range op.params {
		var values []string
		switch p.in {
		case "path":
			if v, ok := pathValues[p.name]; ok {
				values = []string{v}
			}
		case "query":
			values = query[p.name]
		case "header":
			// Optional headers (User-Agent, Accept) only inform: Meta
			// refuses no request for them. Content-Type describes a body,
			// so it is checked only when there is one.
			if !p.required || (strings.EqualFold(p.name, "Content-Type") && len(body) == 0) {
				continue
			}
			if v := r.Header.Get(p.name); v != "" {
				if strings.EqualFold(p.name, "Content-Type") {
					v, _, _ = mime.ParseMediaType(v)
				}
				values = []string{v}
			}
		default:
			continue
		}
		if len(values) == 0 {
			if p.required {
				return fmt.Errorf("%s: %s parameter %q is required", name, p.in, p.name)
			}
			continue
		}
		if p.schema == "" {
			continue
		}
		sch, err := s.schema(p.schema)
		if err != nil {
			return err
		}
		for _, v := range values {
			if err := validate(sch, typed(v, p.kind)); err != nil {
				return fmt.Errorf("%s: %s parameter %q: %w", name, p.in, p.name, err)
			}
		}
	}
	if len(body) == 0 {
		if op.required {
			return fmt.Errorf("%s: a request body is required", name)
		}
		return nil
	}
	if len(op.body) == 0 {
		return fmt.Errorf("%s: the operation takes no request body", name)
	}
	ct, ctParams, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return fmt.Errorf("%s: Content-Type %q: %w", name, r.Header.Get("Content-Type"), err)
	}
	ptr, ok := op.body[ct]
	if !ok {
		var known []string
		for mt := range op.body {
			known = append(known, mt)
		}
		sort.Strings(known)
		return fmt.Errorf("%s: Content-Type %q is not one the operation takes (%s)", name, ct, strings.Join(known, ", "))
	}
	var inst any
	switch ct {
	case "application/json":
		if inst, err = jsonschema.UnmarshalJSON(bytes.NewReader(body)); err != nil {
			return fmt.Errorf("%s: the body is not JSON: %w", name, err)
		}
	case "multipart/form-data":
		if inst, err = formFields(body, ctParams["boundary"]); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	case "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return fmt.Errorf("%s: the form body: %w", name, err)
		}
		m := map[string]any{}
		for k, v := range vals {
			m[k] = v[0]
		}
		inst = m
	default:
		return nil // a binary body: the schema describes bytes
	}
	sch, err := s.schema(ptr)
	if err != nil {
		return err
	}
	if err := validate(sch, inst); err != nil {
		return fmt.Errorf("%s: body: %w", name, err)
	}
	return nil
}

// formFields reads a multipart body into an object: each field's value as
// a string, a file as its file name (the schema's "format: binary" string).
func formFields(body []byte, boundary string) (map[string]any, error) {
	if boundary == "" {
		return nil, errors.New("multipart body without a boundary")
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	out := map[string]any{}
	for {
		part, err := mr.NextPart()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("the multipart body: %w", err)
		}
		name := part.FormName()
		if name == "" {
			continue
		}
		if fn := part.FileName(); fn != "" {
			out[name] = fn
			continue
		}
		var b bytes.Buffer
		if _, err := b.ReadFrom(part); err != nil {
			return nil, fmt.Errorf("the multipart field %q: %w", name, err)
		}
		out[name] = b.String()
	}
}

// typed reads a parameter's text as its schema's type, so that "5" is an
// integer for an integer parameter.
func typed(v, kind string) any {
	switch kind {
	case "integer", "number":
		if n := json.Number(v); n.String() != "" {
			if _, err := n.Float64(); err == nil {
				return n
			}
		}
	case "boolean":
		if b, err := strconv.ParseBool(v); err == nil {
			return b
		}
	case "array":
		var out []any
		for _, e := range strings.Split(v, ",") {
			out = append(out, e)
		}
		return out
	}
	return v
}

// ValidateWebhook checks a webhook payload against the description's schema.
func (s *Spec) ValidateWebhook(body []byte) error {
	s.mu.Lock()
	sch := s.webhook
	s.mu.Unlock()
	if sch == nil {
		var err error
		if sch, err = s.schema(pointer("paths", WebhookPath, "post", "requestBody", "content", "application/json", "schema")); err != nil {
			return err
		}
		s.mu.Lock()
		s.webhook = sch
		s.mu.Unlock()
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook: the payload is not JSON: %w", err)
	}
	if err := validate(sch, inst); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// validate runs a schema and words its failure as the leaf errors, each
// with the place in the instance it is about.
func validate(sch *jsonschema.Schema, inst any) error {
	err := sch.Validate(inst)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	var leaves []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			where := "/" + strings.Join(e.InstanceLocation, "/")
			leaves = append(leaves, fmt.Sprintf("at %s: %s", where, e.ErrorKind.LocalizedString(english)))
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	// A "false schema" leaf is unevaluatedProperties refusing what a failed
	// branch would have evaluated: noise beside the branch's own failure.
	var real []string
	for _, l := range leaves {
		if !strings.HasSuffix(l, ": false schema") {
			real = append(real, l)
		}
	}
	if len(real) > 0 {
		leaves = real
	} else {
		for i, l := range leaves {
			leaves[i] = strings.TrimSuffix(l, "false schema") + "not allowed here (unknown property)"
		}
	}
	sort.Strings(leaves)
	leaves = dedupe(leaves)
	const most = 8
	if len(leaves) > most {
		leaves = append(leaves[:most], fmt.Sprintf("(%d more)", len(leaves)-most))
	}
	return &Mismatch{Details: strings.Join(leaves, "; ")}
}

func dedupe(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Mismatch is a value that does not fit its schema.
type Mismatch struct {
	Details string
}

func (m *Mismatch) Error() string { return m.Details }
