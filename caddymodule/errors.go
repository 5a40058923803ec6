package caddymodule

import (
	"net/http"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// writeError answers with the original API's error document. status 0 takes
// the original's HTTP status for code; a few answers need another one (401
// for an unknown caller, 413 for an oversized body) while keeping the code a
// client already handles.
func writeError(w http.ResponseWriter, status, code int, details string) {
	if status == 0 {
		status = apierror.Status(code)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(apierror.JSON(code, details))
}

// writeJSON answers with a JSON document already encoded.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(body)
}
