package inbound

import (
	"fmt"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// CloudError is an error of a Cloud API status or message webhook.
type CloudError struct {
	Code      int    `json:"code"`
	Title     string `json:"title,omitempty"`
	Message   string `json:"message,omitempty"`
	ErrorData *struct {
		Details string `json:"details,omitempty"`
	} `json:"error_data,omitempty"`
	Href string `json:"href,omitempty"`
}

// onPremErrors maps Cloud API codes to the On-Premises codes and titles an
// existing integration handles (the original's error reference). Codes not
// listed become 1000 (generic), with the Cloud code in the details.
var onPremErrors = map[int]struct {
	code  int
	title string
}{
	131047: {470, "Message failed to send because more than 24 hours have passed since the customer last replied to this number"},
	131048: {471, "Message failed to send because there are restrictions on how many messages can be sent from this phone number"},
	131026: {1026, "Receiver is incapable of receiving this message"},
	131051: {1026, "Receiver is incapable of receiving this message"},
	131021: {1013, "User is not valid"},
	131030: {1013, "User is not valid"},
	131008: {1008, "Required parameter is missing"},
	131009: {1009, "Parameter value is not valid"},
	131000: {1014, "Internal error"},
	132000: {2000, "Number of parameters does not match the expected number of params"},
	132001: {2001, "Template missing"},
	132005: {2005, "Template hydrated text too long"},
	132007: {2007, "Template format character policy violated"},
	132012: {2012, "Template parameter format mismatch"},
	// A paused or disabled template cannot be used, as a missing one.
	132015: {2001, "Template missing"},
	132016: {2001, "Template missing"},
}

// OnPremError is the On-Premises form of a Cloud API error: the mapped code
// and the original's title, the Cloud code and text in the details so
// nothing is lost.
func OnPremError(e CloudError) transport.StatusError {
	text := e.Title
	if e.ErrorData != nil && e.ErrorData.Details != "" {
		text += ": " + e.ErrorData.Details
	} else if e.Message != "" && e.Message != e.Title {
		text += ": " + e.Message
	}
	details := fmt.Sprintf("Cloud API error %d: %s", e.Code, text)
	if m, ok := onPremErrors[e.Code]; ok {
		return transport.StatusError{Code: m.code, Title: m.title, Details: details}
	}
	return transport.StatusError{Code: 1000, Title: "Generic error", Details: details}
}
