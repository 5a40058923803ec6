// Package delivery decides how the Cloud API transport sends a batch:
// throughput and pair limits, retries with backoff, permanent failures,
// a stopped token, and what to do when a request's outcome is unknown
// (the Cloud API does not deduplicate by our id). The transport gives it
// Cloud API request bodies and a Poster; it gives back one Result per
// message. Interfaces only here; the engine is in this package's other
// files.
package delivery

import (
	"context"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// Outgoing is one message, already translated to the Cloud API's body,
// with biz_opaque_callback_data set to ID so its statuses name it.
type Outgoing struct {
	ID   string // our message id
	To   string // recipient, digits
	Body []byte // the Cloud API's POST /{phone-number-id}/messages body
}

// Poster sends one message. It returns the wamid; a *graphapi.Error when
// the Graph API answered with an error; a *graph.UnknownError when the
// outcome is unknown. It must refuse (without sending) once the claim's
// deadline has passed.
type Poster interface {
	Post(ctx context.Context, m Outgoing) (wamid string, err error)
}

// Outcome is what became of a message in a Send.
type Outcome int

const (
	// Sent: the Graph API accepted it (WAMID set).
	Sent Outcome = iota
	// Failed: it can never be sent (Err says why); the coreapp reports a
	// failed status.
	Failed
	// Later: not sent in this batch (limits, deadline, retry pending, or
	// an unknown outcome still being resolved); the coreapp sends it again
	// in order with the shard's later messages.
	Later
)

// Result is one message's outcome.
type Result struct {
	ID      string
	WAMID   string
	Outcome Outcome
	Err     *graphapi.Error // for Failed: the Graph error, mapped by the caller
	Detail  string
}

// Sender sends a batch of one shard's messages, in order: a message of a
// recipient never goes before an earlier one of the same recipient.
type Sender interface {
	Send(ctx context.Context, msgs []Outgoing) []Result
}
