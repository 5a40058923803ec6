package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/release"
	"github.com/multiconnect/multiconnect/internal/stats"
)

// serveMetrics answers /metrics and /v1/metrics as the original did: JSON
// by default, each metric {"data":[{"labels","value"}],"help","type"}
// under "metrics"; the Prometheus text format with ?format=prometheus
// (what a Prometheus scrape configuration must now ask for).
//
// Without format, a client whose Accept header asks for the text or
// OpenMetrics exposition and not for JSON (Prometheus's scraper does) gets
// the text format, so scrape configurations written before JSON became the
// default keep working.
func (g *Gateway) serveMetrics(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if !r.URL.Query().Has("format") && wantsExposition(r.Header.Get("Accept")) {
		format = "prometheus"
	}
	switch format {
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
		"meta":    map[string]string{"api_status": "stable", "version": release.Version},
	})
	if err != nil {
		writeError(w, 0, apierror.GenericError, "encoding metrics: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// wantsExposition reports whether an Accept header names the Prometheus
// text or OpenMetrics format and not JSON.
func wantsExposition(accept string) bool {
	a := strings.ToLower(accept)
	return (strings.Contains(a, "text/plain") || strings.Contains(a, "application/openmetrics-text")) &&
		!strings.Contains(a, "json")
}
