package simnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MessageTypes are the message types the network carries, each with the
// body field that holds its content: the On-Premises API's outbound types.
var MessageTypes = map[string]bool{
	"text": true, "template": true, "hsm": true, "image": true, "audio": true, "video": true,
	"document": true, "sticker": true, "location": true, "contacts": true, "interactive": true,
	"reaction": true,
}

// checkMessage is the network's own look at a message it is given, as far
// as it describes messages: a body that is a message document (a JSON
// object naming its type, as the coreapps send) must be of a type the
// network carries, agree with the message's type and hold that type's
// content. It returns why not, or "". Other bodies (the wire allows any
// JSON; the network's own tests send strings and empty objects) are taken
// as they are.
func checkMessage(m Message) string {
	var body map[string]json.RawMessage
	if len(m.Body) == 0 || m.Body[0] != '{' || json.Unmarshal(m.Body, &body) != nil {
		return ""
	}
	raw, ok := body["type"]
	if !ok {
		return ""
	}
	var typ string
	if json.Unmarshal(raw, &typ) != nil || (m.Type != "" && typ != m.Type) {
		return fmt.Sprintf("body type %s does not match the message type %q", raw, m.Type)
	}
	if !MessageTypes[typ] {
		return fmt.Sprintf("the network carries no %q messages", typ)
	}
	content := bytes.TrimSpace(body[typ])
	if len(content) == 0 || (content[0] != '{' && content[0] != '[') {
		return fmt.Sprintf("a %s message without its %q content", typ, typ)
	}
	return ""
}

// checked records in r why the network refuses m, if it does, and
// reports whether it takes it.
func checked(r *Result, m Message) bool {
	if why := checkMessage(m); why != "" {
		r.Status, r.Error = ResultError, why
		return false
	}
	return true
}

// StatusInjection makes the network report a status for a message it
// received, with what the original's status callbacks carried
// (POST /v1/statuses): tests use it for conversation, pricing and the
// original's error codes, and for the deleted and warning statuses.
type StatusInjection struct {
	ID           string          `json:"id"`
	Status       string          `json:"status"`
	Conversation json.RawMessage `json:"conversation,omitempty"`
	Pricing      json.RawMessage `json:"pricing,omitempty"`
	Errors       json.RawMessage `json:"errors,omitempty"`
}

// ErrUnknownMessage: a status for a message the network never received.
var ErrUnknownMessage = errors.New("simnet: no such message")

// InjectStatus emits in's status for the message it names, to the shard of
// its recipient (see routeLocked), behind that shard's earlier events.
func (s *Server) InjectStatus(in StatusInjection) error {
	if in.ID == "" || in.Status == "" {
		return errors.New("id and status are required")
	}
	details := map[string]json.RawMessage{}
	for k, v := range map[string]json.RawMessage{"conversation": in.Conversation, "pricing": in.Pricing, "errors": in.Errors} {
		if len(v) > 0 {
			if !json.Valid(v) {
				return fmt.Errorf("%s is not valid JSON", k)
			}
			details[k] = v
		}
	}
	var payload json.RawMessage
	if len(details) > 0 {
		payload, _ = json.Marshal(details)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.received) - 1; i >= 0; i-- {
		r := s.received[i]
		if r.ID == in.ID {
			s.emitLocked(r.Shard, Event{Kind: KindStatus, MessageID: r.ID, Status: in.Status, Recipient: r.To,
				Timestamp: time.Now().Unix(), Payload: payload})
			return nil
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknownMessage, in.ID)
}

// unreachableDetails is the failed status of a message to a number that
// is not an account, with the original's code for it.
var unreachableDetails = json.RawMessage(`{"errors":[{"code":1013,"title":"User is not valid"}]}`)
