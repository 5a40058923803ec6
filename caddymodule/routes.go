package caddymodule

import (
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/multiconnect/multiconnect/internal/routetable"
)

// target says who answers a route.
type target uint8

const (
	toNowhere target = iota // no such route: 404 from the gateway
	toGateway               // answered here: users, health, metrics
	toShard                 // the primary coreapp of the recipient's shard
	toCoreapp               // any primary coreapp: media and contacts live in shared storage and MySQL
	toMaster                // the primary master: cluster-wide commands
)

func (t target) String() string {
	switch t {
	case toGateway:
		return "gateway"
	case toShard:
		return "shard"
	case toCoreapp:
		return "coreapp"
	case toMaster:
		return "master"
	}
	return "none"
}

// access says who may call a route.
type access uint8

const (
	anyone  access = iota // login checks its own basic credentials
	user                  // any bearer token
	admin                 // a bearer token of an ADMIN
	monitor               // any bearer token, or the Apikey when one is configured
)

// route is where a request goes and who may send it.
type route struct {
	name   string // a small fixed set: metric label and log field
	target target
	access access
}

// classify maps a request to its route. p must be a cleaned path (see
// cleanPath). The table follows the original Webapp: recipient-bound sends
// are sharded, master-only commands go to the primary master, and what
// needs no particular shard goes to any primary coreapp.
func classify(method, p string) route {
	if i, allow := ownMatch(method, p); i >= 0 {
		o := ownRoutes[i]
		return route{o.name, toGateway, o.access}
	} else if allow != "" {
		return route{"method", toGateway, anyone}
	}
	switch {
	case p == "/v1/messages" && method == http.MethodPost:
		return route{"messages", toShard, user}
	case method == http.MethodPut && strings.HasPrefix(p, "/v1/messages/") && strings.Count(p, "/") == 3:
		// Mark as read: the sender's shard (markread.go finds the sender).
		return route{"mark_read", toShard, user}
	case under(p, "/v1/messages"):
		// PUT /v1/messages/{id} (mark as read) names no recipient.
		return route{"messages", toCoreapp, user}
	case under(p, "/v1/stickerpacks"):
		return route{"stickerpacks", toCoreapp, user}
	case under(p, "/v1/services"): // on-demand garbage collection
		return route{"services", toMaster, admin}
	case under(p, "/v1/contacts"):
		return route{"contacts", toCoreapp, user}
	case under(p, "/v1/media"):
		return route{"media", toCoreapp, user}
	case under(p, "/v1/stats"):
		// The primary master gathers every node's app stats and reports
		// the database's.
		return route{"stats", toMaster, monitor}
	case under(p, "/v1/settings"):
		return route{"settings", toMaster, admin}
	case under(p, "/v1/account"): // registration, verify, shards
		return route{"account", toMaster, admin}
	case under(p, "/v1/support"):
		return route{"support", toMaster, admin}
	case under(p, "/v1/certificates"):
		return route{"certificates", toMaster, admin}
	}
	return route{"unknown", toNowhere, anyone}
}

// ownRoutes are the operations the gateway answers itself. classify routes
// by this table (a path it has under another method is answered 405), and
// OwnRoutes exposes it to the test that compares served routes with the
// OpenAPI document.
var ownRoutes = []struct {
	method, path, name string
	access             access
}{
	{http.MethodPost, "/v1/users/login", "login", anyone},
	{http.MethodPost, "/v1/users/logout", "logout", user},
	{http.MethodGet, "/v1/users", "users", admin},
	{http.MethodPost, "/v1/users", "users", admin},
	// Reading or changing one's own user is allowed; the handler checks
	// that a USER names itself, and DELETE is ADMIN-only.
	{http.MethodGet, "/v1/users/{username}", "users", user},
	{http.MethodPut, "/v1/users/{username}", "users", user},
	{http.MethodDelete, "/v1/users/{username}", "users", admin},
	{http.MethodGet, "/v1/health", "health", monitor},
	{http.MethodGet, "/metrics", "metrics", monitor},
	{http.MethodGet, "/v1/metrics", "metrics", monitor},
	// The CA of the certificate this gateway serves: its own TLS.
	{http.MethodGet, "/v1/certificates/external/ca", "certificates", user},
	{http.MethodGet, "/v1/openapi.json", "openapi", anyone},
	// Meta's webhooks: no token (Meta cannot log in); the handler checks
	// the verify token or the body's signature (cloudapi.go).
	{http.MethodGet, cloudAPIWebhookPath, "cloudapi_webhook", anyone},
	{http.MethodPost, cloudAPIWebhookPath, "cloudapi_webhook", anyone},
}

// ownMatch finds the gateway's own route for method and path p: its index
// in ownRoutes, or -1 and the methods p takes (for a 405's Allow header;
// empty when p is not the gateway's). Literal paths come first:
// /v1/users/login is not the user "login". HEAD is served as GET.
func ownMatch(method, p string) (int, string) {
	for _, templated := range []bool{false, true} {
		var allow []string
		for i, o := range ownRoutes {
			if strings.Contains(o.path, "{") != templated {
				continue
			}
			if _, ok := routetable.Match(o.path, p); ok {
				if o.method == method || (method == http.MethodHead && o.method == http.MethodGet) {
					return i, ""
				}
				allow = append(allow, o.method)
			}
		}
		if len(allow) > 0 {
			return -1, strings.Join(allow, ", ")
		}
	}
	return -1, ""
}

// OwnRoutes lists the operations the gateway answers itself.
func OwnRoutes() []routetable.Route {
	out := make([]routetable.Route, len(ownRoutes))
	for i, o := range ownRoutes {
		out[i] = routetable.Route{Method: o.method, Path: o.path}
	}
	return out
}

// Forwards says which kind of node the gateway sends method and path to:
// "master", "coreapp" (any primary coreapp, or the recipient's shard's),
// "gateway" (answered here) or "" (no route).
func Forwards(method, path string) string {
	switch classify(method, path).target {
	case toMaster:
		return "master"
	case toCoreapp, toShard:
		return "coreapp"
	case toGateway:
		return "gateway"
	}
	return ""
}

// under reports whether p is prefix or below it.
func under(p, prefix string) bool {
	return p == prefix || (len(p) > len(prefix) && p[len(prefix)] == '/' && strings.HasPrefix(p, prefix))
}

// cleanURLPath cleans u's path in place (see cleanPath) and returns the
// path to route on. When the client escaped a character its path needs
// escaped (a wamid is base64: its '/' comes as %2F), the escaped path is
// cleaned and routed on, so an escaped '/' stays inside its segment, also
// at the end of the path, and the request is forwarded with it. Each
// segment is first put in one canonical spelling: "%2E%2E" is a dot
// segment and "m%65dia" is "media", as the node behind would read them.
func cleanURLPath(u *url.URL) string {
	if u.RawPath == "" {
		u.Path = cleanPath(u.Path)
		return u.Path
	}
	segs := strings.Split(u.RawPath, "/")
	for i, s := range segs {
		if d, err := url.PathUnescape(s); err == nil {
			segs[i] = url.PathEscape(d)
		}
	}
	raw := cleanPath(strings.Join(segs, "/"))
	dec, err := url.PathUnescape(raw)
	if err != nil { // every segment was escaped above; kept for safety
		u.Path, u.RawPath = cleanPath(u.Path), ""
		return u.Path
	}
	u.Path, u.RawPath = dec, raw
	return raw
}

// cleanPath resolves dot segments and duplicate slashes and drops a trailing
// slash. Routing and access checks are made on this path and the request is
// forwarded with it, so "/v1/messages/../settings" cannot reach a master
// route with a USER's rights on a node that normalises paths itself.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") && (len(p) == 1 || p[len(p)-1] != '/') && p[0] == '/' {
		return p // the common case, without allocating
	}
	return path.Clean("/" + p)
}
