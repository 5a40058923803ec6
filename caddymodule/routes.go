package caddymodule

import (
	"net/http"
	"path"
	"strings"
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
	switch {
	case p == "/v1/messages" && method == http.MethodPost:
		return route{"messages", toShard, user}
	case under(p, "/v1/messages"):
		// PUT /v1/messages/{id} (mark as read) names no recipient.
		return route{"messages", toCoreapp, user}
	case p == "/v1/users/login":
		return route{"login", toGateway, anyone}
	case p == "/v1/users/logout":
		return route{"logout", toGateway, user}
	case p == "/v1/users":
		return route{"users", toGateway, admin}
	case under(p, "/v1/users"):
		// Reading or changing one's own user is allowed; the handler checks
		// that a USER names itself, and DELETE is ADMIN-only.
		if method == http.MethodDelete {
			return route{"users", toGateway, admin}
		}
		return route{"users", toGateway, user}
	case p == "/v1/health":
		return route{"health", toGateway, monitor}
	case p == "/v1/openapi.json":
		return route{"openapi", toGateway, anyone}
	case p == "/metrics":
		return route{"metrics", toGateway, monitor}
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

// under reports whether p is prefix or below it.
func under(p, prefix string) bool {
	return p == prefix || (len(p) > len(prefix) && p[len(prefix)] == '/' && strings.HasPrefix(p, prefix))
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
