package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/changes"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/routetable"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// routes is the master's internal port. Only cluster members get in: the
// gateway forwards users' master-only commands here with the cluster secret.
func (m *Master) routes() http.Handler {
	return m.members(m.table())
}

// table is the master's router; it needs no running master to be built,
// so "master routes" can print it.
func (m *Master) table() *routetable.Mux {
	mux := routetable.New()
	mux.HandleFunc("GET /internal/health", m.health)
	// Nodes wait here for changes of the cluster row (package changes).
	mux.HandleFunc("GET "+changes.Route, m.primaryOnly(m.hub.ServeHTTP))
	mux.HandleFunc("GET /metrics", m.serveMetrics)
	mux.HandleFunc("GET /v1/settings/application", m.primaryOnly(m.getSettings))
	mux.HandleFunc("PATCH /v1/settings/application", m.primaryOnly(m.patchSettings))
	mux.HandleFunc("DELETE /v1/settings/application", m.primaryOnly(m.resetSettings))
	mux.HandleFunc("GET /v1/settings/application/media/providers", m.primaryOnly(m.getProviders))
	mux.HandleFunc("POST /v1/settings/application/media/providers", m.primaryOnly(m.postProvider))
	mux.HandleFunc("DELETE /v1/settings/application/media/providers/{name}", m.primaryOnly(m.deleteProvider))
	mux.HandleFunc("GET /v1/account/shards", m.primaryOnly(m.getShards))
	mux.HandleFunc("POST /v1/account/shards", m.primaryOnly(m.postShards))
	mux.HandleFunc("POST /v1/account", m.primaryOnly(m.register))
	mux.HandleFunc("POST /v1/account/verify", m.primaryOnly(m.verify))
	mux.HandleFunc("GET /v1/support", m.primaryOnly(m.support))
	mux.HandleFunc("GET /v1/stats/app", m.primaryOnly(m.statsApp))
	mux.HandleFunc("GET /v1/stats/db", m.primaryOnly(m.statsDB))
	m.accountRoutes(mux)
	m.certificateRoutes(mux)
	mux.HandleFunc("PUT /v1/services/message/gc", m.primaryOnly(m.gcMessagesNow))
	return mux
}

func (m *Master) serveMetrics(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(m.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// members refuses (and logs) any request without the cluster secret.
func (m *Master) members(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		presented := r.Header.Get(cluster.SecretHeader)
		if presented == "" {
			presented = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		}
		if !cluster.Authorized(presented, m.secret()) {
			m.log.Warn("refused internal request without a valid cluster secret", "remote", r.RemoteAddr, "path", r.URL.Path)
			apierror.Write(w, apierror.AccessDenied, "internal port: cluster members only")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (m *Master) primaryOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !m.lease.valid.Valid() || !m.ready.Load() {
			apierror.Write(w, apierror.NotPrimaryMaster, "this master does not hold the master lease")
			return
		}
		h(w, r)
	}
}

func (m *Master) health(w http.ResponseWriter, r *http.Request) {
	role := "secondary_master"
	if m.lease.valid.Valid() {
		role = "primary_master"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"node": m.id.ID, "role": role, "hostname": m.id.Hostname, "container": m.id.Container,
		"incarnation": m.id.Incarnation, "lease_epoch": m.lease.epoch, "ready": m.ready.Load(),
	})
}

func (m *Master) getSettings(w http.ResponseWriter, r *http.Request) {
	a, err := settings.Load(r.Context(), m.db)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	doc, err := m.applicationDoc(r.Context(), a)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"application": doc}})
}

// applicationDoc is the settings document as the API shows it: the
// settings plus, once the account is registered, its read-only wa_id (the
// account table's, as in the original, where registration sets it).
func (m *Master) applicationDoc(ctx context.Context, a settings.Application) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	id, err := m.registeredWAID(ctx)
	if err != nil {
		return nil, err
	}
	if id != "" {
		doc["wa_id"], _ = json.Marshal(id)
	}
	return doc, nil
}

func (m *Master) patchSettings(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil || len(body) == 0 {
		apierror.Write(w, apierror.RequestNotValid, "a JSON object of settings is required")
		return
	}
	var a settings.Application
	err = m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		var err error
		a, err = settings.Patch(r.Context(), tx, body)
		return err
	})
	m.settingsAnswer(w, a, err)
}

func (m *Master) resetSettings(w http.ResponseWriter, r *http.Request) {
	var a settings.Application
	err := m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		var err error
		a, err = settings.Reset(r.Context(), tx)
		return err
	})
	m.settingsAnswer(w, a, err)
}

func (m *Master) settingsAnswer(w http.ResponseWriter, a settings.Application, err error) {
	var inv *openapi.Invalid
	switch {
	case errors.As(err, &inv):
		apierror.Write(w, inv.Code, inv.Details)
	case errors.Is(err, settings.ErrInvalid):
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
	case errors.Is(err, ErrNotPrimary):
		apierror.Write(w, apierror.NotPrimaryMaster, err.Error())
	case err != nil:
		apierror.Write(w, apierror.GenericError, err.Error())
	default:
		m.log.Info("settings updated", "heartbeat_interval", a.HeartbeatInterval, "unhealthy_interval", a.UnhealthyInterval)
		doc, err := m.applicationDoc(context.Background(), a)
		if err != nil {
			// The change is committed; answer it without the wa_id.
			m.log.Warn("settings answer without wa_id", "err", err)
			writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"application": a}})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"application": doc}})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
