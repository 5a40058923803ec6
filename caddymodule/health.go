package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
)

// nodeRow is a registered master or coreapp.
type nodeRow struct {
	id, role, hostname, container string
}

// nodeHealth is what a node's GET /internal/health answers.
type nodeHealth struct {
	Node      string `json:"node"`
	Role      string `json:"role"`
	Primary   bool   `json:"primary"`
	Shard     *int   `json:"shard"`
	Connected bool   `json:"connected"`
	Hostname  string `json:"hostname"`
	Container string `json:"container"`
	// TransportError is a primary coreapp's transport problem (an access
	// token the network refuses, say): shown in the entry's errors.
	TransportError string `json:"transport_error"`
}

// healthEntry is one node in the original's HA health document. node
// (host:port) and shard are ours: they tell an operator which process the
// entry is and which shard a coreapp serves (-1: a warm secondary).
type healthEntry struct {
	GatewayStatus string           `json:"gateway_status,omitempty"`
	Role          string           `json:"role"`
	Shard         *int             `json:"shard,omitempty"`
	Node          string           `json:"node"`
	Errors        []apierror.Error `json:"errors,omitempty"`
}

// listNodes reads the nodes seen within forget_after; while MySQL is
// unreachable it returns the last list read.
func (g *Gateway) listNodes(ctx context.Context) ([]nodeRow, error) {
	v := g.view
	db := v.db.Load()
	if db == nil {
		return nil, fmt.Errorf("gateway not ready: %s", v.notReady())
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rows, err := db.QueryContext(qctx, `SELECT id, role, hostname, container FROM nodes
		WHERE last_seen > NOW(6) - INTERVAL ? MICROSECOND ORDER BY id`, time.Duration(g.ForgetAfter).Microseconds())
	if err == nil {
		var out []nodeRow
		for rows.Next() {
			var n nodeRow
			if err = rows.Scan(&n.id, &n.role, &n.hostname, &n.container); err != nil {
				break
			}
			out = append(out, n)
		}
		if err == nil {
			err = rows.Err()
		}
		rows.Close()
		if err == nil {
			v.nodesMu.Lock()
			v.nodes = out
			v.nodesMu.Unlock()
			return out, nil
		}
	}
	v.nodesMu.Lock()
	defer v.nodesMu.Unlock()
	if v.nodes != nil {
		return v.nodes, nil
	}
	return nil, fmt.Errorf("read the node list: %w", err)
}

// health is GET /v1/health: every node asked in parallel, each answer
// keyed hostname:container as in the original.
func (g *Gateway) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use GET /v1/health")
		return
	}
	nodes, err := g.listNodes(r.Context())
	if err != nil {
		writeError(w, 0, apierror.ServiceUnavailable, err.Error())
		return
	}
	master, _ := g.view.primaryMaster(r.Context())
	var secret string
	if s := g.view.secret.Load(); s != nil {
		secret = (*s)[0]
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(g.HealthTimeout))
	defer cancel()
	entries := make([]healthEntry, len(nodes))
	keys := make([]string, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], entries[i] = g.probe(ctx, n, secret, master)
		}()
	}
	wg.Wait()
	// Nodes sharing a host and container (several processes on one machine
	// outside Docker) get their port added to the key so none hides another.
	seen := make(map[string]int, len(keys))
	for _, k := range keys {
		seen[k]++
	}
	doc := make(map[string]healthEntry, len(keys))
	for i, k := range keys {
		if seen[k] > 1 {
			_, port, _ := net.SplitHostPort(entries[i].Node)
			k += ":" + port
		}
		doc[k] = entries[i]
	}
	b, _ := json.Marshal(map[string]any{"health": doc})
	writeJSON(w, http.StatusOK, b)
}

// probe asks one node for its health.
func (g *Gateway) probe(ctx context.Context, n nodeRow, secret, master string) (string, healthEntry) {
	key := n.hostname + ":" + n.container
	e := healthEntry{Node: n.id, Role: n.role}
	if n.role == "master" {
		e.Role = "secondary_master"
		if n.id == master {
			e.Role = "primary_master"
		}
	}
	fail := func(details string) (string, healthEntry) {
		e.Errors = []apierror.Error{apierror.New(apierror.ServiceUnavailable, details)}
		return key, e
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.id+"/internal/health", nil)
	if err != nil {
		return fail(fmt.Sprintf("node address %q: %v", n.id, err))
	}
	req.Header.Set(cluster.SecretHeader, secret)
	resp, err := g.healthClient.Do(req)
	if err != nil {
		return fail(fmt.Sprintf("%s unreachable: %v", n.id, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fail(fmt.Sprintf("%s: reading its health: %v", n.id, err))
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Sprintf("%s answered HTTP %d: %s", n.id, resp.StatusCode, truncate(body, 200)))
	}
	var h nodeHealth
	if err := json.Unmarshal(body, &h); err != nil {
		return fail(fmt.Sprintf("%s: health is not JSON: %v", n.id, err))
	}
	if h.Hostname != "" && h.Container != "" {
		key = h.Hostname + ":" + h.Container
	}
	if h.Role != "" {
		e.Role = h.Role
	}
	switch e.Role {
	case "coreapp":
		e.GatewayStatus = "disconnected"
		if h.Connected {
			e.GatewayStatus = "connected"
		}
		s := -1
		if h.Primary && h.Shard != nil {
			s = *h.Shard
		}
		e.Shard = &s
		if h.TransportError != "" {
			e.Errors = append(e.Errors, apierror.New(apierror.ServiceUnavailable, "transport: "+h.TransportError))
		}
	default:
		// A master holds no network connection; it reports connected when
		// it answers, as the original did.
		e.GatewayStatus = "connected"
	}
	return key, e
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
