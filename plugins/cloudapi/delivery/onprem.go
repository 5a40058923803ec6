package delivery

import (
	"fmt"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// OnPremError is an error as the On-Premises API wrote it in a failed
// status's "errors": {"code", "title", "details"}.
type OnPremError struct {
	Code    int    `json:"code"`
	Title   string `json:"title"`
	Details string `json:"details,omitempty"`
}

// onPremByCloud maps Cloud API codes to the On-Premises error an
// integration written for the On-Premises API already handles (README,
// "Failed sends: Cloud API code to On-Premises error", gives the reasons).
var onPremByCloud = map[int]OnPremError{
	// Sends that fail at once (Permanent).
	graphapi.CodeInvalidParameter:   {1009, "Parameter value is not valid", ""},
	graphapi.CodeRecipientNotValid:  {1009, "Parameter value is not valid", ""},
	graphapi.CodeMessageUndelivered: {1013, "User is not valid", ""},
	graphapi.CodeReengagement:       {470, "Message failed to send because more than 24 hours have passed since the customer last replied to this number", ""},
	graphapi.CodeUnsupportedType:    {501, "Unknown message type", ""},
	131008:                          {1008, "Required parameter is missing", ""},
	131021:                          {1021, "Bad user", ""},
	131031:                          {1031, "Sender account locked", ""},
	131042:                          {402, "Business eligibility: payment issue", ""},
	131052:                          {400, "Media download error", ""},
	130472:                          {472, "User's number is part of an experiment", ""},
	132000:                          {2000, "Template param count mismatch", ""},
	132001:                          {2001, "Template missing", ""},
	132005:                          {2005, "Template hydrated text too long", ""},
	132007:                          {2007, "Template format character policy violated", ""},
	132012:                          {2012, "Template parameter format mismatch", ""},
	// Codes the engine retries or waits out; they reach a failed status
	// only inside a status webhook.
	graphapi.CodeUnknown:        {1014, "Internal error", ""},
	graphapi.CodeService:        {1014, "Internal error", ""},
	graphapi.CodeSomethingWrong: {1014, "Internal error", ""},
	graphapi.CodeTooManyCalls:   {429, "Rate limit hit", ""},
	graphapi.CodeRateLimitHit:   {429, "Rate limit hit", ""},
	graphapi.CodeThroughput:     {429, "Rate limit hit", ""},
	graphapi.CodePairRate:       {1015, "Too many requests", ""},
	graphapi.CodeAccessToken:    {1005, "Access denied", ""},
	// Ours: the send's outcome stayed unknown (policies fail and wait).
	CodeOutcomeUnknown: {410, "Message expired", ""},
}

// OnPrem maps a Cloud API error (a failed send, or the error of a failed
// status webhook) to the On-Premises error an integration expects: the
// table above, else 1000 "Generic error". Details keep the Graph message
// and code, so nothing Meta said is lost.
func OnPrem(e *graphapi.Error) OnPremError {
	if e == nil {
		return OnPremError{Code: 1000, Title: "Generic error"}
	}
	o, ok := onPremByCloud[e.Code]
	if !ok {
		o = OnPremError{Code: 1000, Title: "Generic error"}
	}
	switch {
	case e.Code == CodeOutcomeUnknown:
		o.Details = e.Message
	case e.ErrorData != nil && e.ErrorData.Details != "":
		o.Details = fmt.Sprintf("%s (Cloud API code %d: %s)", e.ErrorData.Details, e.Code, e.Message)
	default:
		o.Details = fmt.Sprintf("Cloud API code %d: %s", e.Code, e.Message)
	}
	return o
}
