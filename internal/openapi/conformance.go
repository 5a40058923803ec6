package openapi

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Case is one example request of an operation's x-conformance list, sent by
// the conformance walker (internal/clustertest) through the gateway of a
// real cluster. See the package's README section for the format.
type Case struct {
	Name string `json:"name"`
	// Role is who sends it: admin (default), user (a USER token), none (no
	// credentials), admin-basic / user-basic (HTTP basic auth with that
	// user's name and password, for POST /v1/users/login).
	Role string `json:"role,omitempty"`
	// Bearer, when set, names a captured token sent instead of Role's.
	Bearer      string            `json:"bearer,omitempty"`
	Params      map[string]string `json:"params,omitempty"`
	Query       map[string]string `json:"query,omitempty"`
	Body        json.RawMessage   `json:"body,omitempty"`
	Raw         *string           `json:"raw,omitempty"`
	RawBase64   string            `json:"raw_base64,omitempty"`
	ContentType string            `json:"content_type,omitempty"`
	// TLS sends the case to the gateway's HTTPS site (Caddy's internal CA)
	// instead of its plain HTTP one.
	TLS bool `json:"tls,omitempty"`
	// Multipart, when set, sends a multipart/form-data body of one file.
	Multipart *Multipart `json:"multipart,omitempty"`
	// HubSignature, when set, sends X-Hub-Signature-256 as Meta signs its
	// webhooks: "sign" signs the body with the app secret the walker's
	// gateway is configured with; any other value is sent as it is.
	HubSignature string `json:"hub_signature,omitempty"`
	Setup        []Step `json:"setup,omitempty"`
	Status       int    `json:"status"`
	Code         int    `json:"code,omitempty"`
}

// Multipart is a form with one file part.
type Multipart struct {
	Field         string `json:"field"`
	Filename      string `json:"filename"`
	ContentType   string `json:"content_type"`
	ContentBase64 string `json:"content_base64"`
}

// Step is a request a case makes before its own, in order.
type Step struct {
	// Target is gateway (default) or simnet (the simulated network's API).
	Target      string            `json:"target,omitempty"`
	Role        string            `json:"role,omitempty"`
	Method      string            `json:"method"`
	Path        string            `json:"path"` // {name} segments take captured values
	Query       map[string]string `json:"query,omitempty"`
	Body        json.RawMessage   `json:"body,omitempty"`
	Raw         *string           `json:"raw,omitempty"`
	RawBase64   string            `json:"raw_base64,omitempty"`
	ContentType string            `json:"content_type,omitempty"`
	// Status, when set, is the status the step must get (else any 2xx).
	Status int `json:"status,omitempty"`
	// Capture maps a name to a JSON pointer into the step's answer.
	Capture map[string]string `json:"capture,omitempty"`
}

// NotServed is an operation of the original API this project does not
// serve, listed under the document's top-level x-not-served.
type NotServed struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Why    string `json:"why"`
}

// operation returns the document's object for op.
func operation(op Operation) (map[string]any, error) {
	once.Do(load)
	if loadErr != nil {
		return nil, loadErr
	}
	paths, _ := doc["paths"].(map[string]any)
	item, _ := paths[op.Path].(map[string]any)
	o, _ := item[strings.ToLower(op.Method)].(map[string]any)
	if o == nil {
		return nil, fmt.Errorf("openapi: no operation %s %s", op.Method, op.Path)
	}
	return o, nil
}

// Cases decodes op's x-conformance list.
func Cases(op Operation) ([]Case, error) {
	o, err := operation(op)
	if err != nil {
		return nil, err
	}
	raw, ok := o["x-conformance"]
	if !ok {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	var cs []Case
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, fmt.Errorf("openapi: %s %s: x-conformance: %w", op.Method, op.Path, err)
	}
	return cs, nil
}

// OnPrem is op's x-onprem: "original" or "different: ...".
func OnPrem(op Operation) (string, error) {
	o, err := operation(op)
	if err != nil {
		return "", err
	}
	s, _ := o["x-onprem"].(string)
	return s, nil
}

// NotServedOperations lists the document's x-not-served entries.
func NotServedOperations() ([]NotServed, error) {
	once.Do(load)
	if loadErr != nil {
		return nil, loadErr
	}
	b, err := json.Marshal(doc["x-not-served"])
	if err != nil {
		return nil, err
	}
	var ns []NotServed
	if err := json.Unmarshal(b, &ns); err != nil {
		return nil, fmt.Errorf("openapi: x-not-served: %w", err)
	}
	return ns, nil
}

// response finds op's answer for status (the exact status, else its class
// such as 2XX, else default), following a reference to
// components.responses, and the JSON pointer to it in the document.
func response(op Operation, status int) (resp map[string]any, ptr, key string, err error) {
	o, err := operation(op)
	if err != nil {
		return nil, "", "", err
	}
	responses, _ := o["responses"].(map[string]any)
	key = strconv.Itoa(status)
	if _, found := responses[key]; !found {
		key = key[:1] + "XX"
		if _, found := responses[key]; !found {
			key = "default"
		}
	}
	resp, _ = responses[key].(map[string]any)
	if resp == nil {
		return nil, "", "", fmt.Errorf("openapi: %s %s describes no %d answer", op.Method, op.Path, status)
	}
	ptr = "/paths/" + escape(op.Path) + "/" + strings.ToLower(op.Method) + "/responses/" + escape(key)
	if ref, _ := resp["$ref"].(string); ref != "" {
		name, found := strings.CutPrefix(ref, "#/components/responses/")
		if !found {
			return nil, "", "", fmt.Errorf("openapi: %s %s: unsupported response reference %s", op.Method, op.Path, ref)
		}
		comps, _ := doc["components"].(map[string]any)
		rs, _ := comps["responses"].(map[string]any)
		if resp, _ = rs[name].(map[string]any); resp == nil {
			return nil, "", "", fmt.Errorf("openapi: no response %s", ref)
		}
		ptr = "/components/responses/" + escape(name)
	}
	return resp, ptr, key, nil
}

// ResponseMediaTypes lists the media types the document gives op's answer
// with status ("*/*" for any).
func ResponseMediaTypes(op Operation, status int) ([]string, error) {
	resp, _, _, err := response(op, status)
	if err != nil {
		return nil, err
	}
	content, _ := resp["content"].(map[string]any)
	var out []string
	for mt := range content {
		out = append(out, mt)
	}
	sort.Strings(out)
	return out, nil
}

// ResponseSchema compiles the JSON schema of op's answer with status. ok
// is false when the document gives that answer no application/json
// content (a binary download, an empty answer).
func ResponseSchema(op Operation, status int) (s *jsonschema.Schema, ok bool, err error) {
	resp, ptr, key, err := response(op, status)
	if err != nil {
		return nil, false, err
	}
	content, _ := resp["content"].(map[string]any)
	media, _ := content["application/json"].(map[string]any)
	if _, has := media["schema"]; !has {
		return nil, false, nil
	}
	ptr += "/content/application~1json/schema"
	schemasMu.Lock()
	defer schemasMu.Unlock()
	if s, found := schemas[ptr]; found {
		return s, true, nil
	}
	frag := (&url.URL{Fragment: ptr}).EscapedFragment()
	s, err = compiler.Compile(docURL + "#" + frag)
	if err != nil {
		return nil, false, fmt.Errorf("openapi: compiling the %s answer of %s %s: %w", key, op.Method, op.Path, err)
	}
	schemas[ptr] = s
	return s, true, nil
}

// escape makes s one JSON pointer token.
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
