// Package routetable is the route table of a daemon's HTTP API: the table
// is the router itself, so what a node says it serves (for the test that
// compares the served routes with the OpenAPI document) is what it serves.
// Requests no route takes are answered in the API's error shape: 404 with
// 1006, or 405 with 1025 and an Allow header when the path exists under
// another method. net/http's ServeMux would answer those in plain text.
package routetable

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// Route is one method and path template, in the OpenAPI document's form
// (/v1/media/{media-id}).
type Route struct {
	Method string `json:"method"`
	Path   string `json:"path"`
}

// Mux is net/http's ServeMux recording the routes registered on it.
type Mux struct {
	mux    *http.ServeMux
	routes []Route
}

// New returns an empty Mux.
func New() *Mux {
	m := &Mux{mux: http.NewServeMux()}
	// The catch-all matches whatever no registered pattern does, under any
	// method, so ServeMux never answers 404 or 405 itself.
	m.mux.HandleFunc("/", m.unrouted)
	return m
}

// HandleFunc registers h for pattern, "METHOD /path" (ServeMux syntax;
// wildcards are written {name} as in the document).
func (m *Mux) HandleFunc(pattern string, h http.HandlerFunc) { m.Handle(pattern, h) }

// Handle registers h for pattern (see HandleFunc).
func (m *Mux) Handle(pattern string, h http.Handler) {
	method, p, ok := strings.Cut(pattern, " ")
	if !ok || method == "" || !strings.HasPrefix(p, "/") {
		panic(fmt.Sprintf("routetable: pattern %q must be METHOD /path", pattern))
	}
	m.mux.Handle(pattern, h)
	m.routes = append(m.routes, Route{Method: method, Path: p})
}

// Routes lists the registered routes, sorted.
func (m *Mux) Routes() []Route { return Sorted(m.routes) }

// ServeHTTP routes r. A path that is not clean is not routed: ServeMux
// would answer it with a redirect in HTML.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.Path; p == "" || p[0] != '/' || (p != "/" && path.Clean(p) != p) {
		apierror.Write(w, apierror.NotFound, "no such route: "+r.URL.Path)
		return
	}
	m.mux.ServeHTTP(w, r)
}

func (m *Mux) unrouted(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, rt := range m.routes {
		if rt.Method == r.Method || slices.Contains(allow, rt.Method) {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = rt.Method
		if _, pattern := m.mux.Handler(probe); pattern != "/" && pattern != "" {
			allow = append(allow, rt.Method)
		}
	}
	if len(allow) > 0 {
		sort.Strings(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		apierror.WriteStatus(w, http.StatusMethodNotAllowed, apierror.RequestNotValid,
			fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")))
		return
	}
	apierror.Write(w, apierror.NotFound, "no such route: "+r.Method+" "+r.URL.Path)
}

// Sorted returns routes sorted by path, then method.
func Sorted(routes []Route) []Route {
	out := slices.Clone(routes)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Method < out[j].Method
	})
	return out
}

// Print writes routes as JSON, what a daemon run with the single argument
// "routes" prints (the route-coverage test reads it).
func Print(w io.Writer, routes []Route) error {
	return json.NewEncoder(w).Encode(Sorted(routes))
}

// Match reports whether path p matches template tmpl, whose {name}
// segments match any one non-empty segment, and returns the values. It
// allocates only for the values of a match (it runs on every request).
func Match(tmpl, p string) (map[string]string, bool) {
	if !strings.Contains(tmpl, "{") {
		return nil, tmpl == p
	}
	var params map[string]string
	for {
		t, trest, _ := strings.Cut(tmpl, "/")
		seg, prest, _ := strings.Cut(p, "/")
		if len(t) > 1 && t[0] == '{' && t[len(t)-1] == '}' {
			if seg == "" {
				return nil, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[t[1:len(t)-1]] = seg
		} else if t != seg {
			return nil, false
		}
		tHas, pHas := strings.Contains(tmpl, "/"), strings.Contains(p, "/")
		if tHas != pHas {
			return nil, false
		}
		if !tHas {
			break
		}
		tmpl, p = trest, prest
	}
	return params, true
}
