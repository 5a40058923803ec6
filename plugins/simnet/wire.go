package simnet

import (
	"encoding/json"
	"fmt"
)

// ProtocolVersion is the version of the wire protocol and of the network's
// behaviour, reported by Transport.Info.
// (2: registration codes; 3: event streams and the push window; 4: events
// routed by the shard count the coreapps tell, transport.Layout).
const ProtocolVersion = "4"

// Frame operations. Requests carry a Seq that the reply echoes; frames the
// network pushes on its own (event, and closed when it ends a connection)
// have Seq 0.
const (
	OpHello     = "hello"     // -> hello{keepalive_ms}
	OpConnect   = "connect"   // {shard, epoch, node} -> connected{conn_id} | refused{reason}
	OpConnected = "connected" //
	OpRefused   = "refused"   //
	OpPing      = "ping"      // -> pong; any frame resets the keepalive timer
	OpPong      = "pong"      //
	OpSend      = "send"      // {msgs} -> sent{results} | error{reason}
	OpSent      = "sent"      //
	OpEvent     = "event"     // pushed: {event}
	OpClose     = "close"     // -> closed, then the network closes the socket
	OpClosed    = "closed"    // also pushed, with a reason, when the network ends a connection
	OpError     = "error"     // a request that could not be served: {reason}
	OpAck       = "ack"       // {ack_seq}: events of the shard up to ack_seq are stored -> acked
	OpAcked     = "acked"     //
	OpCheck     = "check"     // {inputs} -> checked{contacts}
	OpChecked   = "checked"   //
	OpRegister  = "register"  // {registration} -> code_sent{vname, registered} | rejected{reason, error}
	OpCodeSent  = "code_sent" //
	OpVerify    = "verify"    // {registration with code} -> verified | rejected{reason, error}
	OpVerified  = "verified"  //
	OpRejected  = "rejected"  // a registration request the network turned down
	// Account-level settings (account.go): {account{op, body}} ->
	// account_done{account{op, body}} | rejected{reason, error}.
	OpAccount     = "account"
	OpAccountDone = "account_done"
)

// Why the network rejected a registration request (Frame.Error).
const (
	RejectBadCert = "bad_cert" // the certificate carries no readable name
	RejectBadCode = "bad_code" // not the code the network issued
	RejectNoCode  = "no_code"  // no code outstanding for the number
	RejectInvalid = "invalid"  // the request itself is malformed
)

// Send result statuses on the wire.
const (
	ResultAccepted  = "accepted"
	ResultDuplicate = "duplicate"
	ResultError     = "error"
)

// Frame is one newline-terminated JSON object on the plugin connection.
// Fields not used by an operation are omitted; an absent shard means 0.
type Frame struct {
	Op  string `json:"op"`
	Seq uint64 `json:"seq,omitempty"`

	KeepaliveMS int64 `json:"keepalive_ms,omitempty"` // hello reply

	Shard  int    `json:"shard,omitempty"`   // connect, connected
	Epoch  uint64 `json:"epoch,omitempty"`   // connect, connected
	Node   string `json:"node,omitempty"`    // connect
	ConnID int64  `json:"conn_id,omitempty"` // connected
	// The cluster's shard count and the shard map version it was read at
	// (transport.Layout): connect, ping.
	Shards     int   `json:"shards,omitempty"`
	MapVersion int64 `json:"map_version,omitempty"`

	Reason string `json:"reason,omitempty"` // refused, closed, error

	Msgs    []Message `json:"msgs,omitempty"`    // send
	Results []Result  `json:"results,omitempty"` // sent
	Event   *Event    `json:"event,omitempty"`   // event

	AckSeq   uint64          `json:"ack_seq,omitempty"`  // ack
	Inputs   []string        `json:"inputs,omitempty"`   // check
	Contacts []ContactResult `json:"contacts,omitempty"` // checked

	Reg        *RegistrationFrame `json:"reg,omitempty"`        // register, verify
	VName      string             `json:"vname,omitempty"`      // code_sent
	Registered bool               `json:"registered,omitempty"` // code_sent: already verified, no code sent
	Error      string             `json:"error,omitempty"`      // rejected: one of the Reject* constants

	Account *AccountFrame   `json:"account,omitempty"` // account, account_done
	Call    string          `json:"call,omitempty"`    // call: the transport op (see rest.go)
	Body    json.RawMessage `json:"body,omitempty"`    // call, called: the op's body and result
}

// RegistrationFrame carries a registration request or a code to verify.
type RegistrationFrame struct {
	CC          string `json:"cc"`
	PhoneNumber string `json:"phone_number"`
	Method      string `json:"method,omitempty"` // register: sms or voice
	Cert        []byte `json:"cert,omitempty"`   // register (base64 in JSON)
	Pin         string `json:"pin,omitempty"`    // register
	Code        string `json:"code,omitempty"`   // verify
}

// ContactResult is the network's verdict on one contact check input.
type ContactResult struct {
	Input  string `json:"input"`
	Status string `json:"status"` // ContactValid or ContactInvalid
	WAID   string `json:"wa_id,omitempty"`
}

// Contact check verdicts, matching plugins/transport.
const (
	ContactValid   = "valid"
	ContactInvalid = "invalid"
)

// Message is one outbound message in a send frame.
type Message struct {
	ID   string          `json:"id"`
	To   string          `json:"to"`
	Type string          `json:"type,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Result is the network's verdict on one message of a send frame, in the
// order of the frame's msgs.
type Result struct {
	ID     string `json:"id"`
	Status string `json:"status"` // ResultAccepted, ResultDuplicate or ResultError
	Error  string `json:"error,omitempty"`
}

// Event kinds and message statuses, matching plugins/transport.
const (
	KindStatus  = "status"
	KindInbound = "inbound"
	KindMoved   = "moved" // the place of an event moved to another shard

	StatusSent      = "sent"
	StatusDelivered = "delivered"
	StatusRead      = "read"
	StatusFailed    = "failed"
)

// Event is something the network pushes to a shard's connection.
type Event struct {
	Kind      string          `json:"kind"`
	MessageID string          `json:"message_id"`
	Status    string          `json:"status,omitempty"`
	Recipient string          `json:"recipient,omitempty"`
	Timestamp int64           `json:"timestamp"` // Unix seconds
	Payload   json.RawMessage `json:"payload,omitempty"`
	Shard     int             `json:"shard,omitempty"`
	Seq       uint64          `json:"seq,omitempty"` // per shard and stream, from 1; what an ack refers to
	// Stream names the numbering of Seq: a new one each time the network
	// starts, since it keeps nothing across a restart.
	Stream string `json:"stream,omitempty"`
	Conn   int64  `json:"conn,omitempty"` // the connection that pushed it
}

// marshalFrame encodes f as one line.
func marshalFrame(f Frame) ([]byte, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", f.Op, err)
	}
	return append(b, '\n'), nil
}

// maxFrame bounds one frame, so a peer cannot make the other side buffer
// without limit.
const maxFrame = 4 << 20
