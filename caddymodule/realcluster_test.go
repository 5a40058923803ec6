package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// realHealth is GET /v1/health as a test reads it.
type realHealth struct {
	Health map[string]struct {
		GatewayStatus string           `json:"gateway_status"`
		Role          string           `json:"role"`
		Shard         *int             `json:"shard"`
		Node          string           `json:"node"`
		Errors        []apierror.Error `json:"errors"`
	} `json:"health"`
}

// startWithRealNodes starts a real cluster (bin/master, bin/coreapp, the
// simulated network) and the gateway in front of it, with extra lines in
// its multiconnect block.
func startWithRealNodes(t *testing.T, o clustertest.Options, extra string) (*clustertest.Cluster, *gateway) {
	t.Helper()
	cl := clustertest.New(t, o)
	c := &testCluster{t: t, srv: cl.DB, db: cl.SQL, secret: cl.Secret, realMasters: true}
	c.shards.Store(int64(cl.Opts.Shards))
	return cl, c.startGateway(extra)
}

// TestWithRealNodes runs the gateway in front of a real cluster: two
// bin/master, three bin/coreapp with the simnet transport, the simulated
// network, two shards. Master commands reach the real primary master, the
// health document matches what the network sees, and after the primary
// coreapp of shard 0 is SIGKILLed and the masters promote the warm one, the
// gateway reports it and routes shard 0 to a primary again.
func TestWithRealNodes(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 3, Shards: 2}, "")
	token := g.loginAdmin()

	st, body := g.do("GET", "/v1/settings/application", "", bearer(token))
	var settings map[string]any
	if st != 200 || json.Unmarshal([]byte(body), &settings) != nil {
		t.Fatalf("GET /v1/settings/application through the gateway: HTTP %d %s", st, body)
	}
	st, body = g.do("PATCH", "/v1/settings/application", `{"heartbeat_interval":-1}`, jsonHeaders(bearer(token)))
	expect(t, "invalid setting, refused by the real master", st, body, 400, apierror.ParameterInvalid)

	conns := cl.WaitAllShardsConnected(15 * time.Second)
	primaryMaster, err := cl.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	checkHealth := func(when string, want map[string]string, wantShard map[string]int, dead string) error {
		st, body := g.do("GET", "/v1/health", "", bearer(token))
		var h realHealth
		if st != 200 || json.Unmarshal([]byte(body), &h) != nil {
			return fmt.Errorf("%s: GET /v1/health: HTTP %d %s", when, st, body)
		}
		byNode := map[string]string{}
		for key, e := range h.Health {
			byNode[e.Node] = key
			if e.Node == dead {
				if len(e.Errors) == 0 {
					return fmt.Errorf("%s: the killed node %s has no errors entry: %+v", when, dead, e)
				}
				continue
			}
			if len(e.Errors) != 0 {
				return fmt.Errorf("%s: %s (%s) reports errors %+v", when, key, e.Node, e.Errors)
			}
			if w, ok := want[e.Node]; ok && e.Role+"/"+e.GatewayStatus != w {
				return fmt.Errorf("%s: %s is %s/%s, want %s", when, e.Node, e.Role, e.GatewayStatus, w)
			}
			if s, ok := wantShard[e.Node]; ok && (e.Shard == nil || *e.Shard != s) {
				return fmt.Errorf("%s: %s serves shard %v, want %d", when, e.Node, e.Shard, s)
			}
		}
		for n := range want {
			if _, ok := byNode[n]; !ok {
				return fmt.Errorf("%s: health has no entry for %s: %s", when, n, body)
			}
		}
		if len(h.Health) != 5 {
			return fmt.Errorf("%s: %d health entries, want 5: %s", when, len(h.Health), body)
		}
		return nil
	}
	want := map[string]string{conns[0].Node: "coreapp/connected", conns[1].Node: "coreapp/connected", primaryMaster: "primary_master/connected"}
	for _, m := range cl.Masters {
		if m.Addr != primaryMaster {
			want[m.Addr] = "secondary_master/connected"
		}
	}
	warm := ""
	for _, p := range cl.Coreapps {
		if p.Addr != conns[0].Node && p.Addr != conns[1].Node {
			warm = p.Addr
			want[warm] = "coreapp/disconnected"
		}
	}
	if err := checkHealth("steady", want, map[string]int{conns[0].Node: 0, conns[1].Node: 1, warm: -1}, ""); err != nil {
		t.Fatal(err)
	}

	// A shard-0 message reaches a primary coreapp (whatever it answers, it
	// is not "not the primary" nor "unreachable").
	to := recipientFor(t, 0, 2, 11)
	reachesPrimary := func() (int, string, bool) {
		st, body := g.do("POST", "/v1/messages", messageBody(to), jsonHeaders(bearer(token)))
		code := errCode(body)
		return st, body, st != http.StatusServiceUnavailable && code != apierror.NotPrimaryCoreapp && code != apierror.ServiceUnavailable
	}
	if st, body, ok := reachesPrimary(); !ok {
		t.Fatalf("before the kill, a shard-0 message got HTTP %d %s", st, body)
	}

	victim := cl.CoreappByAddr(conns[0].Node)
	victim.Kill()
	killed := time.Now()
	next := cl.WaitConnected(0, victim.Addr, 20*time.Second)
	connected := time.Since(killed)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, body, ok := reachesPrimary()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after the new primary %s connected, a shard-0 message still gets HTTP %d %s", next.Node, st, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("shard 0: %s killed, %s connected after %s, routed to by the gateway %s after the kill",
		victim.Addr, next.Node, connected.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	want[next.Node] = "coreapp/connected"
	delete(want, victim.Addr)
	var lastErr error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if lastErr = checkHealth("after the failover", want, map[string]int{next.Node: 0, conns[1].Node: 1}, victim.Addr); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Error(lastErr)
	}
	cl.RequireNoViolations()
}
