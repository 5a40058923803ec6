// Package graphapi holds what the Cloud API transport (plugins/cloudapi)
// and the Graph API test server (plugins/cloudapi/graphtest) share: the
// Graph API's error document and what a sender does with each error code.
// Codes and their meaning follow Meta's Cloud API error reference.
package graphapi

import (
	"fmt"
	"net/http"
)

// DefaultVersion is the Graph API version the transport speaks unless told
// otherwise; the OpenAPI description in ../shared/refs/cloudapi is v23.0.
const DefaultVersion = "v23.0"

// DefaultBaseURL is the real Graph API host.
const DefaultBaseURL = "https://graph.facebook.com"

// Error is the Graph API's error object: {"error":{...}}.
type Error struct {
	Message      string     `json:"message"`
	Type         string     `json:"type,omitempty"`
	Code         int        `json:"code"`
	ErrorSubcode int        `json:"error_subcode,omitempty"`
	ErrorData    *ErrorData `json:"error_data,omitempty"`
	FBTraceID    string     `json:"fbtrace_id,omitempty"`
	// HTTPStatus is the status the error came with (not part of the body).
	HTTPStatus int `json:"-"`
}

// ErrorData carries the error's details.
type ErrorData struct {
	MessagingProduct string `json:"messaging_product,omitempty"`
	Details          string `json:"details,omitempty"`
}

// ErrorDocument is a whole error answer.
type ErrorDocument struct {
	Error Error `json:"error"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("graph api: HTTP %d, code %d: %s", e.HTTPStatus, e.Code, e.Message)
}

// Codes the transport treats specially (Meta's error reference).
const (
	CodeUnknown            = 1      // "API Unknown": retry
	CodeService            = 2      // "API Service": temporary, retry
	CodeTooManyCalls       = 4      // application request limit
	CodeInvalidParameter   = 100    // permanent
	CodeAccessToken        = 190    // the token expired or is invalid: stop
	CodeRateLimitHit       = 80007  // WABA rate limit
	CodeThroughput         = 130429 // the number's messages/s limit
	CodeSomethingWrong     = 131000 // generic, retry
	CodeRecipientNotValid  = 131009 // parameter value is not valid: permanent
	CodeMessageUndelivered = 131026 // permanent
	CodeReengagement       = 131047 // 24-hour window: permanent
	CodeUnsupportedType    = 131051 // permanent
	CodePairRate           = 131056 // (business, user) pair rate limit
)

// Class is what a sender does with an error.
type Class int

const (
	// Retry: send again after a backoff.
	Retry Class = iota
	// Throttle: the whole number is over its limit; hold every send.
	Throttle
	// PairLimit: this recipient only is over its limit; delay its messages,
	// keeping their order, and go on with the others.
	PairLimit
	// Permanent: the message can never be sent; fail it.
	Permanent
	// TokenInvalid: stop sending until the access token is fixed.
	TokenInvalid
)

func (c Class) String() string {
	return [...]string{"retry", "throttle", "pair_limit", "permanent", "token_invalid"}[c]
}

// Classify says what to do with e. Unknown 4xx codes are permanent (the
// request itself is wrong); unknown 5xx codes are retried.
func Classify(e *Error) Class {
	switch e.Code {
	case CodeUnknown, CodeService, CodeSomethingWrong:
		return Retry
	case CodeTooManyCalls, CodeRateLimitHit, CodeThroughput:
		return Throttle
	case CodePairRate:
		return PairLimit
	case CodeAccessToken:
		return TokenInvalid
	}
	if e.HTTPStatus >= http.StatusInternalServerError {
		return Retry
	}
	return Permanent
}
