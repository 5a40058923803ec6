package caddymodule

import (
	"net/http"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
)

// serveOpenAPI is GET /v1/openapi.json: the OpenAPI description of the API,
// without credentials, so tools can read what they are about to call.
func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use GET /v1/openapi.json")
		return
	}
	if f := r.URL.Query().Get("format"); f != "" && f != "json" {
		writeError(w, 0, apierror.ParameterInvalid, "format: only json is served")
		return
	}
	doc, err := openapi.Document()
	if err != nil {
		writeError(w, 0, apierror.GenericError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, doc)
}
