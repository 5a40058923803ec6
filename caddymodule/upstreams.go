package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// upstreamsVar is the request variable the multiconnect handler sets to the
// dial addresses chosen for this request ({http.vars.multiconnect.upstreams}).
const upstreamsVar = "multiconnect.upstreams"

// Upstreams is the dynamic upstream source behind the gateway: it hands
// reverse_proxy the node(s) the multiconnect handler chose for the request
// from its cached shard map (the primary coreapp of the recipient's shard,
// every primary coreapp, or the primary master). The choice is made by the
// handler, which also retries after a failover, so this source only reads
// it and never touches MySQL.
//
// In the Caddyfile it is `dynamic multiconnect` inside reverse_proxy; the
// multiconnect directive configures it by itself.
type Upstreams struct{}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.multiconnect",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

var errNoChoice = errors.New("no multiconnect upstream chosen for this request: the multiconnect handler must run before this reverse_proxy")

// GetUpstreams returns the nodes chosen for r. Each call makes new Upstream
// values: reverse_proxy provisions (writes to) what it is given on every
// request, so sharing them between concurrent requests would race; the
// per-address state (request counts, failures) lives in Caddy's host table
// and is kept across requests.
func (Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	addrs, _ := caddyhttp.GetVar(r.Context(), upstreamsVar).([]string)
	if len(addrs) == 0 {
		return nil, errNoChoice
	}
	ups := make([]reverseproxy.Upstream, len(addrs))
	out := make([]*reverseproxy.Upstream, len(addrs))
	for i, a := range addrs {
		ups[i].Dial = a
		out[i] = &ups[i]
	}
	return out, nil
}

// Interface guards
var (
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
)
