package main

import (
	"database/sql"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/certs"
	"github.com/multiconnect/multiconnect/internal/routetable"
)

// certificateRoutes are the original's /v1/certificates operations the
// master serves: the uploads (stored in the settings table by the primary
// master, fenced) and the webhook CA. GET /v1/certificates/external/ca is
// the gateway's own: it is about the certificate that gateway serves.
func (m *Master) certificateRoutes(mux *routetable.Mux) {
	mux.HandleFunc("POST /v1/certificates/external", m.primaryOnly(m.postExternalCert))
	mux.HandleFunc("GET /v1/certificates/webhooks/ca", m.primaryOnly(m.getWebhooksCA))
	mux.HandleFunc("POST /v1/certificates/webhooks/ca", m.primaryOnly(m.postWebhooksCA))
	mux.HandleFunc("DELETE /v1/certificates/webhooks/ca", m.primaryOnly(m.deleteWebhooksCA))
}

// readPEM reads an upload's body (the original took text/plain; the
// content type is not checked, the PEM parser decides).
func readPEM(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, certs.MaxUpload+1))
	switch {
	case err != nil:
		apierror.Write(w, apierror.RequestNotValid, "reading the body: "+err.Error())
		return nil, false
	case len(body) > certs.MaxUpload:
		apierror.Write(w, apierror.ParameterInvalid, "the certificate document is larger than 1 MiB")
		return nil, false
	case len(body) == 0:
		apierror.Write(w, apierror.ParameterMissing, "the body must be the PEM document (Content-Type: text/plain)")
		return nil, false
	}
	return body, true
}

// postExternalCert stores the gateway certificate and key every gateway
// configured with the multiconnect certificate manager serves from then on.
// The key is never logged nor returned.
func (m *Master) postExternalCert(w http.ResponseWriter, r *http.Request) {
	body, ok := readPEM(w, r)
	if !ok {
		return
	}
	ext, err := certs.ParseExternal(body, time.Now())
	if err != nil {
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
		return
	}
	err = m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		return certs.Store(r.Context(), tx, certs.ExternalRow, ext.PEM)
	})
	if !m.certAnswer(w, err) {
		return
	}
	leaf := ext.Cert.Leaf
	m.log.Info("gateway certificate stored", "subject", leaf.Subject.String(), "dns_names", leaf.DNSNames,
		"not_after", leaf.NotAfter, "chain", len(ext.Cert.Certificate))
	writeJSON(w, http.StatusOK, nil) // the original answered null
}

func (m *Master) getWebhooksCA(w http.ResponseWriter, r *http.Request) {
	v, ok, err := certs.Load(r.Context(), m.db, certs.WebhooksCARow)
	switch {
	case err != nil:
		apierror.Write(w, apierror.GenericError, err.Error())
	case !ok:
		apierror.Write(w, apierror.NotFound, "no webhook CA certificate is set")
	default:
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, v)
	}
}

func (m *Master) postWebhooksCA(w http.ResponseWriter, r *http.Request) {
	body, ok := readPEM(w, r)
	if !ok {
		return
	}
	cas, norm, err := certs.ParseCABundle(body)
	if err != nil {
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
		return
	}
	err = m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		return certs.Store(r.Context(), tx, certs.WebhooksCARow, norm)
	})
	if !m.certAnswer(w, err) {
		return
	}
	m.log.Info("webhook CA stored", "certificates", len(cas), "first", cas[0].Subject.String())
	writeJSON(w, http.StatusOK, struct{}{})
}

func (m *Master) deleteWebhooksCA(w http.ResponseWriter, r *http.Request) {
	err := m.lease.fenced(r.Context(), func(tx *sql.Tx) error {
		return certs.Delete(r.Context(), tx, certs.WebhooksCARow)
	})
	if !m.certAnswer(w, err) {
		return
	}
	m.log.Info("webhook CA removed")
	writeJSON(w, http.StatusOK, struct{}{})
}

// certAnswer writes the error of a fenced write, if any, and says whether
// the write went through.
func (m *Master) certAnswer(w http.ResponseWriter, err error) bool {
	switch {
	case errors.Is(err, ErrNotPrimary):
		apierror.Write(w, apierror.NotPrimaryMaster, err.Error())
	case err != nil:
		apierror.Write(w, apierror.GenericError, err.Error())
	default:
		return true
	}
	return false
}
