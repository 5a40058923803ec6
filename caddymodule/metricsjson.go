package caddymodule

import (
	"encoding/json"
	"net/http"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/stats"
)

// serveMetrics answers /metrics and /v1/metrics as the original did: JSON
// by default, each metric {"data":[{"labels","value"}],"help","type"}
// under "metrics"; the Prometheus text format with ?format=prometheus
// (what a Prometheus scrape configuration must now ask for).
func (g *Gateway) serveMetrics(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Query().Get("format") {
	case "prometheus":
		g.metrics.ServeHTTP(w, r)
		return
	case "", "json":
	default:
		writeError(w, 0, apierror.ParameterInvalid, "format must be prometheus, or absent for JSON")
		return
	}
	fams, err := g.registry.Gather()
	if err != nil && len(fams) == 0 {
		writeError(w, 0, apierror.GenericError, "gathering metrics: "+err.Error())
		return
	}
	b, err := json.Marshal(map[string]any{
		"metrics": stats.Document(fams),
		"meta":    map[string]string{"api_status": "stable", "version": node.Version},
	})
	if err != nil {
		writeError(w, 0, apierror.GenericError, "encoding metrics: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}
