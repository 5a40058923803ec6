package cloudapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
)

// poster is the delivery.Poster of a Transport: POST
// /{phone-number-id}/messages under the claim (the engine records each
// attempt in cloudapi_messages before calling it, and the wamid after).
type poster struct{ t *Transport }

var _ delivery.Poster = poster{}

// messagesAnswer is the Graph API's answer to a send.
type messagesAnswer struct {
	Messages []struct {
		ID string `json:"id"`
	} `json:"messages"`
}

// Post implements delivery.Poster. It refuses, sending nothing, without a
// live claim; the request ends at the claim's deadline (Transport.Do).
func (p poster) Post(ctx context.Context, m delivery.Outgoing) (string, error) {
	t := p.t
	var ans messagesAnswer
	if err := t.Do(ctx, http.MethodPost, "/"+t.cfg.PhoneNumberID+"/messages", "application/json", m.Body, &ans); err != nil {
		return "", fmt.Errorf("post %s: %w", m.ID, err)
	}
	if len(ans.Messages) == 0 || ans.Messages[0].ID == "" {
		// Taken (2xx), but with no wamid to keep: its statuses still
		// name it by our id (biz_opaque_callback_data).
		return "", &graph.UnknownError{Op: "POST messages", Err: errors.New("the Graph API answered without a message id")}
	}
	return ans.Messages[0].ID, nil
}
