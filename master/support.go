package main

import (
	"bytes"
	"context"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/members"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/release"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/internal/shardmap"
	"github.com/multiconnect/multiconnect/internal/stats"
)

// Nodes silent longer than this are left out of stats and support: they
// are gone, not merely slow (liveness is written every minute by default).
const forgetAfter = time.Hour

// How long stats and support wait for each node.
const nodeTimeout = time.Second

func (m *Master) memberClient() *members.Client {
	return &members.Client{HTTP: &http.Client{Timeout: 2 * nodeTimeout}, Secret: m.secret}
}

// meta is the original's response trailer.
func meta() *apierror.Meta { return apierror.CurrentMeta() }

// support is GET /v1/support: what an operator (or the support desk) needs
// to see at once: versions, schema, the lease, every node with its role and
// version, and who serves which shard.
func (m *Master) support(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	nodes, err := members.List(ctx, m.db, forgetAfter)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	have, err := schema.Version(ctx, m.db)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	smap, err := shardmap.Load(ctx, m.db)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	serves := map[string]int{}
	var shards []map[string]any
	for _, e := range smap.Entries {
		shards = append(shards, map[string]any{"shard": e.Shard, "node": e.NodeID, "epoch": e.Epoch})
		if e.NodeID != "" {
			serves[e.NodeID] = e.Shard
		}
	}
	var list []map[string]any
	for _, n := range nodes {
		entry := map[string]any{"key": n.Key, "node": n.ID, "role": m.roleOf(n), "version": n.Version,
			"incarnation": n.Incarnation, "last_seen": n.LastSeen.UTC().Format(time.RFC3339Nano)}
		if n.Role == node.RoleCoreapp {
			s, ok := serves[n.ID]
			if !ok {
				s = -1
			}
			entry["shard"] = s
		}
		list = append(list, entry)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"support": map[string]any{
			"version":        release.Version,
			"schema_version": have,
			"schema_latest":  schema.Latest(),
			"shards":         smap.Shards,
			"master_lease":   map[string]any{"holder": m.id.ID, "epoch": m.lease.epoch},
			"nodes":          list,
			"shard_map":      shards,
		},
		"meta": meta(),
	})
}

// roleOf names a node's role as /v1/health does. Only the primary answers
// support and stats, so the lease holder is this master.
func (m *Master) roleOf(n members.Node) string {
	switch {
	case n.Role == node.RoleCoreapp:
		return "coreapp"
	case n.ID == m.id.ID:
		return "primary_master"
	default:
		return "secondary_master"
	}
}

// statsApp is GET /v1/stats/app: every node's multiconnect_* metrics,
// gathered from their /metrics at once, in the original's JSON (keyed
// hostname:container) or, with ?format=prometheus, as one exposition with
// a node label. A node that does not answer is reported with an error.
func (m *Master) statsApp(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	nodes, err := members.List(ctx, m.db, forgetAfter)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	byNode, failed := m.gather(ctx, nodes)
	if r.URL.Query().Get("format") == "prometheus" {
		var buf bytes.Buffer
		if err := stats.WriteText(&buf, byNode); err != nil {
			apierror.Write(w, apierror.GenericError, err.Error())
			return
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		w.Write(buf.Bytes())
		return
	}
	app := map[string]any{}
	for key, fams := range byNode {
		app[key] = stats.Document(fams)
	}
	for key, err := range failed {
		app[key] = map[string]any{"errors": []apierror.Error{apierror.New(apierror.ServiceUnavailable, err.Error())}}
	}
	writeJSON(w, http.StatusOK, map[string]any{"stats": map[string]any{"app": app}, "meta": meta()})
}

// gather reads every node's metrics; this master's own come from its
// registry, not over the network.
func (m *Master) gather(ctx context.Context, nodes []members.Node) (map[string][]*dto.MetricFamily, map[string]error) {
	byNode, failed := map[string][]*dto.MetricFamily{}, map[string]error{}
	var others []members.Node
	for _, n := range nodes {
		if n.ID != m.id.ID {
			others = append(others, n)
			continue
		}
		fams, err := m.metrics.reg.Gather()
		if err != nil {
			failed[n.Key] = err
			continue
		}
		byNode[n.Key] = stats.Only(fams, "multiconnect_")
	}
	for _, a := range m.memberClient().Each(ctx, others, "/metrics", nodeTimeout) {
		if a.Err != nil {
			failed[a.Node.Key] = a.Err
			continue
		}
		fams, err := stats.Parse(a.Body)
		if err != nil {
			failed[a.Node.Key] = err
			continue
		}
		byNode[a.Node.Key] = stats.Only(fams, "multiconnect_")
	}
	return byNode, failed
}
