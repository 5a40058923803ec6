// Package apierror is the original API's error shape, shared by the gateway,
// masters and coreapps so a client sees one format whoever answered:
//
//	{"meta":{"api_status":"stable","version":"v1.2.0"},
//	 "errors":[{"code":1009,"title":"Parameter value not valid","details":"..."}]}
package apierror

import (
	"encoding/json"
	"net/http"

	"github.com/multiconnect/multiconnect/internal/release"
)

// Codes of the original API.
const (
	AccessDenied           = 1005
	NotFound               = 1006
	ParameterMissing       = 1008
	ParameterInvalid       = 1009
	TooManyRequests        = 1015
	NotPrimaryMaster       = 1017
	NotPrimaryCoreapp      = 1018
	PasswordChangeRequired = 1024
	RequestNotValid        = 1025
	GenericError           = 1000
	ServiceUnavailable     = 1011
)

type info struct {
	title  string
	status int
}

var table = map[int]info{
	GenericError:           {"Generic error", http.StatusInternalServerError},
	AccessDenied:           {"Access denied", http.StatusForbidden},
	NotFound:               {"Not found", http.StatusNotFound},
	ParameterMissing:       {"Parameter not found", http.StatusBadRequest},
	ParameterInvalid:       {"Parameter value not valid", http.StatusBadRequest},
	ServiceUnavailable:     {"Service not ready", http.StatusServiceUnavailable},
	TooManyRequests:        {"Too many requests", http.StatusTooManyRequests},
	NotPrimaryMaster:       {"Not a primary master", http.StatusServiceUnavailable},
	NotPrimaryCoreapp:      {"Not a primary coreapp", http.StatusServiceUnavailable},
	PasswordChangeRequired: {"Password change required", http.StatusUnauthorized},
	RequestNotValid:        {"Request not valid", http.StatusBadRequest},
}

// Error is one entry of the errors array.
type Error struct {
	Code    int    `json:"code"`
	Title   string `json:"title"`
	Details string `json:"details,omitempty"`
}

// Meta is what the original put beside every answer's body: the API's
// status and the version of the software that answered.
type Meta struct {
	APIStatus string `json:"api_status"`
	Version   string `json:"version"`
}

// Body is the whole error document. Like the original's, it carries meta.
type Body struct {
	Meta   *Meta   `json:"meta,omitempty"`
	Errors []Error `json:"errors"`
}

// CurrentMeta is the meta of this process's answers.
func CurrentMeta() *Meta { return &Meta{APIStatus: "stable", Version: release.Version} }

// New builds the error for code with details.
func New(code int, details string) Error {
	return Error{Code: code, Title: table[code].title, Details: details}
}

// Status is the HTTP status the original used for code (500 if unknown).
func Status(code int) int {
	if i, ok := table[code]; ok {
		return i.status
	}
	return http.StatusInternalServerError
}

// JSON renders the error document for code.
func JSON(code int, details string) []byte {
	b, _ := json.Marshal(Body{Meta: CurrentMeta(), Errors: []Error{New(code, details)}})
	return b
}

// Write sends the error for code on a net/http ResponseWriter.
func Write(w http.ResponseWriter, code int, details string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(Status(code))
	w.Write(JSON(code, details))
}

// WriteStatus is Write with another HTTP status than code's own (405 for a
// method a route does not take, 413 for a body too large).
func WriteStatus(w http.ResponseWriter, status, code int, details string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(JSON(code, details))
}
