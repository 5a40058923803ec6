package main

import (
	"database/sql"
	"errors"
	"io"
	"net/http"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// Media providers: /v1/settings/application/media/providers. Stored by
// internal/settings as one settings row; the coreapps read it when a
// message names a provider. Secrets are never logged nor answered.

func (m *Master) getProviders(w http.ResponseWriter, r *http.Request) {
	list, err := settings.LoadProviders(r.Context(), m.db)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	out := make([]settings.Provider, len(list))
	for i, p := range list {
		out[i] = p.Masked()
	}
	writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"application": map[string]any{"media": map[string]any{"providers": out}}}})
}

func (m *Master) postProvider(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil || len(body) == 0 {
		apierror.Write(w, apierror.RequestNotValid, "a JSON array with one provider is required")
		return
	}
	var p settings.Provider
	err = m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		var err error
		p, err = settings.PutProvider(r.Context(), tx, body)
		return err
	})
	if err == nil {
		m.log.Info("media provider stored", "name", p.Name, "type", p.Type, "basic", p.Config.Basic != nil)
	}
	m.providerAnswer(w, err)
}

func (m *Master) deleteProvider(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		return settings.DeleteProvider(r.Context(), tx, name)
	})
	if err == nil {
		m.log.Info("media provider deleted", "name", name)
	}
	m.providerAnswer(w, err)
}

func (m *Master) providerAnswer(w http.ResponseWriter, err error) {
	var inv *openapi.Invalid
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{})
	case errors.As(err, &inv):
		apierror.Write(w, inv.Code, inv.Details)
	case errors.Is(err, settings.ErrNoProvider):
		apierror.Write(w, apierror.NotFound, err.Error())
	case errors.Is(err, settings.ErrInvalid):
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
	case errors.Is(err, ErrNotPrimary):
		apierror.Write(w, apierror.NotPrimaryMaster, err.Error())
	default:
		apierror.Write(w, apierror.GenericError, err.Error())
	}
}
