package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// TestHealth checks GET /v1/health in the original's HA shape: one entry
// per node keyed host:container, gateway_status and role for each, the
// shard each coreapp serves (-1 for a warm secondary), and an errors entry
// for a node that does not answer, within health_timeout.
func TestHealth(t *testing.T) {
	c := newTestCluster(t, 2)
	p0, p1, warm, dead := c.addNode("coreapp"), c.addNode("coreapp"), c.addNode("coreapp"), c.addNode("coreapp")
	p0.shard.Store(0)
	p0.connected.Store(true)
	p1.shard.Store(1) // primary, transport not connected yet
	c.assign(0, p0, 1)
	c.assign(1, p1, 1)
	m1, m2 := c.addNode("master"), c.addNode("master")
	m1.primary.Store(true)
	c.setPrimaryMaster(m1)
	dead.kill()
	g := c.startGateway("health_timeout 500ms")
	token := g.loginAdmin()

	start := time.Now()
	st, body := g.do("GET", "/v1/health", "", bearer(token))
	if st != 200 {
		t.Fatalf("GET /v1/health: HTTP %d %s", st, body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("GET /v1/health took %s with one node down", took)
	}
	var doc struct {
		Health map[string]struct {
			GatewayStatus string           `json:"gateway_status"`
			Role          string           `json:"role"`
			Shard         *int             `json:"shard"`
			Errors        []apierror.Error `json:"errors"`
		} `json:"health"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("health %s: %v", body, err)
	}
	if len(doc.Health) != 6 {
		t.Errorf("health has %d entries, want 6: %s", len(doc.Health), body)
	}
	intp := func(i int) *int { return &i }
	for _, want := range []struct {
		n      *stubNode
		status string
		role   string
		shard  *int
	}{
		{p0, "connected", "coreapp", intp(0)},
		{p1, "disconnected", "coreapp", intp(1)},
		{warm, "disconnected", "coreapp", intp(-1)},
		{m1, "connected", "primary_master", nil},
		{m2, "connected", "secondary_master", nil},
	} {
		key := "host:" + want.n.container
		e, ok := doc.Health[key]
		switch {
		case !ok:
			t.Errorf("health lacks %s: %s", key, body)
		case e.GatewayStatus != want.status || e.Role != want.role || len(e.Errors) != 0:
			t.Errorf("%s: %+v, want gateway_status %s, role %s", key, e, want.status, want.role)
		case (want.shard == nil) != (e.Shard == nil) || (want.shard != nil && *want.shard != *e.Shard):
			t.Errorf("%s: shard %v, want %v", key, e.Shard, want.shard)
		}
	}
	e := doc.Health["host:"+dead.container]
	if len(e.Errors) != 1 || e.Errors[0].Code != apierror.ServiceUnavailable || !strings.Contains(e.Errors[0].Details, dead.addr) || e.Role != "coreapp" {
		t.Errorf("the dead node's entry %+v, want one 1011 error naming %s", e, dead.addr)
	}
	st, body = g.do("POST", "/v1/health", "", bearer(token))
	expect(t, "POST /v1/health", st, body, 405, apierror.RequestNotValid)
}
