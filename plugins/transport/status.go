package transport

import (
	"encoding/json"
	"strings"
)

// Statuses a network may report beyond the four every network sends (see
// StatusSent): the original's `deleted` (the recipient deleted the message)
// and `warning` (sent, with something to know, such as catalog items left
// out). Hosts pass any status through to the webhook.
const (
	StatusDeleted = "deleted"
	StatusWarning = "warning"
)

// StatusDetails is what an EventStatus event's Payload may carry (JSON):
// the parts of the original's status callbacks beyond id, status,
// timestamp and recipient, when the network provides them. The coreapp
// copies them into the status callback in these shapes; a network that
// has none leaves Payload empty. A failed status without Errors gets the
// generic 1000 in the callback.
type StatusDetails struct {
	Conversation *Conversation `json:"conversation,omitempty"`
	Pricing      *Pricing      `json:"pricing,omitempty"`
	// Errors use the original's codes: 470 (re-engagement: more than 24
	// hours since the customer last replied), 471 (spam rate limit), 480
	// (the recipient's identity changed), 1013 (not a valid user), 1026
	// (the receiver cannot take this message), 2000-2xxx (template
	// errors), ...
	Errors []StatusError `json:"errors,omitempty"`
}

// Conversation is the conversation a message opened or belongs to.
type Conversation struct {
	ID     string              `json:"id"`
	Origin *ConversationOrigin `json:"origin,omitempty"`
	// ExpirationTimestamp is when the conversation ends, Unix seconds;
	// the original sent it with the first message's sent status.
	ExpirationTimestamp int64 `json:"expiration_timestamp,omitempty"`
}

// ConversationOrigin says who opened the conversation: business_initiated,
// user_initiated or referral_conversion in the original.
type ConversationOrigin struct {
	Type string `json:"type"`
}

// Pricing is how the message is billed.
type Pricing struct {
	Billable     bool   `json:"billable"`
	PricingModel string `json:"pricing_model"` // CBP (conversation-based) in the original
	Category     string `json:"category"`
}

// StatusError is one error of a failed (or warning) status.
type StatusError struct {
	Code    int    `json:"code"`
	Title   string `json:"title"`
	Details string `json:"details,omitempty"`
}

// sendErrorPrefix marks a SendResult.Error that carries the original's
// error for the failed status (see SendError).
const sendErrorPrefix = "status-error:"

// SendError writes e as a SendResult.Error: the coreapp puts e itself in
// the message's failed status instead of the generic 1000, so a network
// that knows why a message failed (the Cloud API's codes mapped to the
// original's) tells the user's webhook.
func SendError(e StatusError) string {
	b, _ := json.Marshal(e)
	return sendErrorPrefix + string(b)
}

// ParseSendError reads what SendError wrote; false for any other text.
func ParseSendError(s string) (StatusError, bool) {
	var e StatusError
	rest, ok := strings.CutPrefix(s, sendErrorPrefix)
	if !ok || json.Unmarshal([]byte(rest), &e) != nil || e.Code == 0 {
		return StatusError{}, false
	}
	return e, true
}
