// Package transport is the SDK for transport plugins: the programs that
// connect a coreapp to a messaging network.
//
// A coreapp starts its plugin with Start and programs against the Transport
// interface; the calls travel over gRPC (hashicorp/go-plugin) to the plugin
// process, whose main calls Serve with its own Transport implementation.
// Keeping the network client in a separate process lets the coreapp kill it
// (and with it every socket it holds) without killing itself, and lets the
// kernel close the plugin's connection when the coreapp dies (Pdeathsig).
//
// The cluster's safety rests on one rule that every plugin must enforce: a
// connection carries an absolute Deadline on the host's CLOCK_MONOTONIC
// (see MonoNow), and the plugin never writes to the network at or after it
// and closes the connection itself when it is reached, unless Extend moved
// it. The coreapp derives the deadline from its lease, so a coreapp that is
// frozen, partitioned or dead stops being on the network by the time its
// lease can be given to another node.
package transport

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Transport is one connection to a messaging network, for one shard at a
// time. Implementations must be safe for concurrent use.
type Transport interface {
	// Info describes the network. It needs no connection.
	Info(ctx context.Context) (Info, error)

	// Connect opens the connection for req.Shard at req.Epoch on behalf
	// of req.Node. The plugin keeps the connection alive only until
	// req.Deadline and closes it itself then, unless Extend moved it. It
	// refuses a deadline already in the past (ErrDeadlinePassed) and
	// returns ErrRefused when the network refuses the connection.
	// Connecting while connected with another shard or epoch first
	// disconnects; connecting again with the same shard and epoch while
	// connected only updates the deadline.
	Connect(ctx context.Context, req ConnectRequest) error

	// Extend moves the current connection's deadline. It fails with
	// ErrNotConnected when there is no live connection and with
	// ErrEpochMismatch when the connection is for another epoch, so a
	// renewal of an old lease can never prolong a newer connection.
	// layout is the cluster's shard count as the coreapp last read it;
	// the plugin passes a newer one on to the network (see Layout).
	Extend(ctx context.Context, epoch uint64, deadline int64, layout Layout) error

	// Disconnect closes the current connection, if any. A nil error means
	// the plugin will not write to the network again for it.
	Disconnect(ctx context.Context) error

	// Health reports the state of the current connection.
	Health(ctx context.Context) (Health, error)

	// Send delivers msgs in order over the current connection; it checks
	// the deadline before writing. The results are per message and in
	// the order of msgs. The error is for the batch as a whole (not
	// connected, deadline passed, connection lost while waiting), in
	// which case the network may or may not have received it; sending
	// again is safe because the network deduplicates by message ID.
	// A message the network could never take (larger than its frames,
	// say) must fail alone (SendFailed) rather than fail the batch, or
	// every later message of the shard would wait behind it; a plugin
	// splits a batch into as many network writes as its limits need.
	Send(ctx context.Context, msgs []Message) ([]SendResult, error)

	// Events streams what the network pushes (message statuses, inbound
	// messages) from whichever connection is current, until ctx ends.
	// The channel is closed when the stream ends for any reason,
	// including the plugin exiting; subscribe again to resume.
	//
	// The network keeps every event until it is acknowledged (Ack) and
	// pushes the unacknowledged ones again to the shard's next
	// connection, so an event may arrive twice; Event.Shard, Event.Stream
	// and Event.Seq identify it. Each connection (Event.Conn) pushes the
	// shard's unacknowledged events from the oldest, then new ones, in Seq
	// order and without gaps (an EventSkipped covers the numbers of the
	// statuses it stands for), so a host can tell a lost event from a new
	// connection's start. The network may hold back events past a window
	// of unacknowledged ones (flow control), so a host that stops
	// acknowledging stops receiving: this bounds every queue on the way.
	// A plugin keeps the events that arrive while nobody subscribes, for
	// the next subscriber, and drops none.
	Events(ctx context.Context) (<-chan Event, error)

	// Ack tells the network, over connection conn (the Event.Conn of the
	// events), that every event of shard up to and including seq is
	// safely stored. It fails with ErrNotConnected when conn is not the
	// plugin's current connection for shard (a newer connection may
	// number another stream); the events then come again on the shard's
	// next connection.
	Ack(ctx context.Context, shard int, conn int64, seq uint64) error

	// CheckContacts asks the network which inputs (phone numbers as a
	// user typed them) are reachable accounts, over the current
	// connection. Results are per input, in the order of inputs.
	CheckContacts(ctx context.Context, inputs []string) ([]ContactResult, error)

	// RequestCode asks the network to send a registration code for the
	// account req names, by SMS or voice call. It needs no connection. The
	// result carries the verified name the network read from the
	// certificate; AlreadyRegistered means the network already has this
	// number verified for this certificate, so no code was sent. It fails
	// with ErrBadCert when the network cannot read the certificate.
	RequestCode(ctx context.Context, req RegistrationRequest) (RegistrationResult, error)

	// VerifyCode checks a registration code against the one the network
	// issued for the account. It needs no connection. It fails with
	// ErrBadCode when the code is wrong and ErrNoCode when the network has
	// no code outstanding for the account.
	VerifyCode(ctx context.Context, req VerifyRequest) error
	// Call performs an operation of the On-Premises API beyond sending
	// messages, the network's own way: account-level settings, marking a
	// message read, identity checks. op is one of the Op constants (see
	// ops.go, which documents each one's body and result). It fails with
	// ErrUnsupported for an op the network does not have, ErrInvalidValue
	// when the network refuses the argument (the error's text says why, for
	// the API's 1009), and ErrNoSuchItem when what the op names does not
	// exist (1006). Whether an op needs the shard's connection is the op's
	// to say; without one that it needs, Call fails with ErrNotConnected.
	Call(ctx context.Context, op string, body []byte) ([]byte, error)
}

// EventBatcher is what a Transport may offer besides Events: the same
// stream, with the same guarantees, in the batches the events come in (a
// batch is never empty). The gRPC transport uses it on both sides, so a
// batch crosses from plugin to host in one message and one channel send.
type EventBatcher interface {
	EventBatches(ctx context.Context) (<-chan []Event, error)
}

// Registration methods: how the network delivers the code.
const (
	MethodSMS   = "sms"
	MethodVoice = "voice"
)

// RegistrationRequest asks for a registration code.
type RegistrationRequest struct {
	CC     string // country calling code, digits
	Phone  string // national number, digits
	Method string // MethodSMS or MethodVoice
	// Cert is the business's certificate (decoded from the API's base64).
	Cert []byte
	// Pin is the account's two-step verification PIN, if it has one.
	Pin string
}

// RegistrationResult is the network's answer to RequestCode.
type RegistrationResult struct {
	// VName is the verified business name the certificate carries.
	VName string
	// AlreadyRegistered means no code was sent: the number is already
	// verified for this certificate.
	AlreadyRegistered bool
}

// VerifyRequest checks a registration code.
type VerifyRequest struct {
	CC    string
	Phone string
	Code  string
}

// Contact check verdicts.
const (
	ContactValid   = "valid"
	ContactInvalid = "invalid"
)

// ContactResult is the network's verdict on one contact check input.
type ContactResult struct {
	Input  string
	Status string // ContactValid or ContactInvalid
	WAID   string // the account id, when valid
}

// Info describes a messaging network.
type Info struct {
	Name    string
	Version string
	// KeepaliveTimeout is how long the network keeps a silent connection
	// before dropping it. The cluster waits at least this long after a
	// node's deadline before promoting another node, so that the network
	// has certainly let go of the old connection.
	KeepaliveTimeout time.Duration
}

// ConnectRequest asks for the connection of one shard.
type ConnectRequest struct {
	Shard int
	// Epoch increases every time the shard's lease moves to another
	// holder; the network refuses older epochs.
	Epoch uint64
	// Node identifies the coreapp, for the network's records and logs.
	Node string
	// Deadline is an absolute CLOCK_MONOTONIC time in nanoseconds (see
	// MonoNow) after which the plugin must be off the network.
	Deadline int64
	// Layout is the cluster's shard count as the coreapp read it.
	Layout Layout
}

// Layout is the cluster's shard count as of a version of its shard map.
// The network routes every event (a status, an inbound message) to the
// shard of its recipient under the newest layout it was told, and when
// the count changes it moves the events it still holds (unacknowledged,
// pushed or not) to their recipient's new shard, behind that shard's own,
// each recipient's in their order. So a removed shard's events are not
// stranded, and a recipient's events live in one shard's stream at any
// time, which keeps their order across a change (README, "Changing the
// shard count online"). Counts are powers of two and a recipient's shard
// is shard.For, so the network and the cluster agree on it.
type Layout struct {
	Shards int // 0: unknown (the network then routes as before)
	// Version is the shard map version (cluster.map_version) the count
	// was read at: the network keeps the layout of the highest version,
	// so a late word from a deposed holder cannot undo a change.
	Version int64
}

// Health is the state of a plugin's connection.
type Health struct {
	Connected bool
	Shard     int
	Epoch     uint64
	// Deadline is the current connection's deadline (MonoNow scale).
	Deadline int64
	// LastError says why the last connection ended or failed, if it did.
	LastError string
}

// Message is one outbound message.
type Message struct {
	// ID is chosen by the sender and unique network-wide; the network
	// uses it to recognise a message sent twice.
	ID   string
	To   string
	Type string
	// Body is a JSON document.
	Body []byte
}

// SendStatus is the network's verdict on one message of a batch.
type SendStatus string

const (
	// SendAccepted means the network took the message.
	SendAccepted SendStatus = "accepted"
	// SendDuplicate means the network already had a message with that ID;
	// it counts as delivered for the sender.
	SendDuplicate SendStatus = "duplicate"
	// SendFailed means the network rejected the message; see Error.
	SendFailed SendStatus = "failed"
)

// SendResult is the outcome for one message of a Send batch.
type SendResult struct {
	ID     string
	Status SendStatus
	Error  string // set when Status is SendFailed
}

// EventKind tells what an Event is about.
type EventKind string

const (
	// EventStatus is a status change of an outbound message.
	EventStatus EventKind = "status"
	// EventInbound is a message from the network to the coreapp.
	EventInbound EventKind = "inbound"
	// EventMoved holds the place, in a shard's numbering, of an event the
	// network moved to another shard's stream when the shard count
	// changed (see Layout): it carries nothing to store and is
	// acknowledged like any other, so the stream has no gap.
	EventMoved EventKind = "moved"
)

// Message statuses carried by EventStatus events, in the order a message
// normally goes through them.
const (
	StatusSent      = "sent"
	StatusDelivered = "delivered"
	StatusRead      = "read"
	StatusFailed    = "failed"
)

// Event is something the network pushed.
type Event struct {
	Kind      EventKind
	MessageID string
	// Status is set for EventStatus (StatusSent, ...).
	Status string
	// Recipient is the contact the event is about: the addressee of an
	// outbound message, the sender of an inbound one.
	Recipient string
	// Timestamp is when the network recorded the event, in Unix seconds.
	Timestamp int64
	// Payload is a JSON document: the message of an inbound event; for a
	// status event, optionally a StatusDetails (conversation, pricing,
	// errors with the original's codes).
	Payload []byte
	// Shard is the shard whose connection carried the event.
	Shard int
	// Seq numbers the shard's events within Stream, from 1, in the order
	// the network emitted them; Ack refers to it.
	Seq uint64
	// Stream names the numbering Seq belongs to. A network whose
	// numbering starts again (it restarted and lost its state) must
	// report a new Stream, or its new events would pass for copies of
	// old ones.
	Stream string
	// Conn identifies the network connection that pushed the event.
	Conn int64
}

// Errors a Transport returns for its documented failure modes. They keep
// their identity across the gRPC boundary, so a coreapp can test them with
// errors.Is on whatever the plugin returned.
var (
	// ErrNotConnected means there is no live connection.
	ErrNotConnected = errors.New("transport: not connected")
	// ErrDeadlinePassed means the deadline given (or the connection's
	// deadline) is not in the future.
	ErrDeadlinePassed = errors.New("transport: deadline passed")
	// ErrEpochMismatch means the call named another epoch than the
	// current connection's.
	ErrEpochMismatch = errors.New("transport: epoch mismatch")
	// ErrRefused means the network refused the connection (for example
	// an older epoch, or the epoch already connected elsewhere).
	ErrRefused = errors.New("transport: refused by the network")
	// ErrBadCert means the network could not read the registration
	// certificate.
	ErrBadCert = errors.New("transport: certificate not valid")
	// ErrBadCode means the registration code is not the one the network
	// issued.
	ErrBadCode = errors.New("transport: wrong registration code")
	// ErrNoCode means the network has no registration code outstanding
	// for the account (none was requested, or it was already used).
	ErrNoCode = errors.New("transport: no registration code outstanding")
	// ErrUnsupported means the network has no such operation (Call).
	ErrUnsupported = errors.New("transport: operation not supported by this network")
	// ErrInvalidValue means the network refused an operation's argument.
	ErrInvalidValue = errors.New("transport: value refused by the network")
	// ErrNoSuchItem means what the operation names does not exist.
	ErrNoSuchItem = errors.New("transport: no such item")
)

// MonoNow returns the host's CLOCK_MONOTONIC in nanoseconds. Unlike the
// monotonic reading inside Go's time.Time, which is private to a process,
// this value is comparable between processes on one host, so the coreapp
// and its plugin agree on what a Deadline means however long either of
// them is paused in between.
func MonoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC always exists on Linux; failing here means
		// the process cannot keep time and must not keep connections.
		panic("transport: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

// Until returns how long until the MonoNow instant t; negative if t passed.
func Until(t int64) time.Duration { return time.Duration(t - MonoNow()) }
