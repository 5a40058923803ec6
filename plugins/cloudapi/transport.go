// Package cloudapi is the transport of the WhatsApp Cloud API (Meta's Graph
// API): what the transport-cloudapi plugin serves. It holds no connection:
// the network is reached by HTTPS requests and answers by webhooks, which
// the gateway stores in MySQL (cloudapi_inbound). So "connected" here means
// that the plugin holds a valid claim deadline for a shard: every Graph
// request checks it first and carries it as its context deadline, so a
// coreapp whose claim has lapsed (frozen, partitioned, deposed) never sends.
package cloudapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Name is the network's name in transport.Info.
const Name = "cloudapi"

// KeepaliveTimeout is what Info reports as the network's keepalive: how
// long the cluster waits after a holder's deadline before promoting another
// node. There is no connection to drop, but a request started just before
// the deadline may still be on its way to Meta (or queued in a proxy) when
// the claim lapses; the plugin cancels it at the deadline, and this margin
// covers the bytes already sent. It is added to every failover.
const KeepaliveTimeout = 2 * time.Second

// Claim is the shard this plugin may send for, as of its last Connect or
// Extend: "connected" means Deadline (transport.MonoNow scale) is ahead.
type Claim struct {
	Shard    int
	Epoch    uint64
	Node     string
	Deadline int64
	// Conn numbers the event stream the plugin pushes for this claim
	// (transport.Event.Conn); a new claim, or a redelivery after
	// acknowledgements stopped, takes a new one.
	Conn int64
	// done ends when the claim does (Disconnect, replaced, lapsed).
	done context.Context
}

// sender names the claim in a request's headers.
func (c Claim) sender() graph.Sender {
	return graph.Sender{Node: c.Node, Shard: c.Shard, Epoch: c.Epoch}
}

// bound returns ctx ended at the claim's deadline, or sooner when the
// claim ends: a request started under the claim cannot outlive it.
func (c Claim) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	rctx, cancel := context.WithDeadline(ctx, time.Now().Add(transport.Until(c.Deadline)))
	if c.done == nil {
		return rctx, cancel
	}
	stop := context.AfterFunc(c.done, cancel)
	return rctx, func() { stop(); cancel() }
}

// InboundReader reads the shard's rows of cloudapi_inbound, which the
// gateway's webhook route writes: Read returns the shard's unacknowledged
// events with a seq above afterSeq, in seq order, at most limit; Ack marks
// every event of the shard up to seq acknowledged.
type InboundReader interface {
	Read(ctx context.Context, shard int, afterSeq uint64, limit int) ([]transport.Event, error)
	Ack(ctx context.Context, shard int, seq uint64) error
}

// Transport is the Cloud API's transport.Transport. Safe for concurrent use.
type Transport struct {
	cfg   Config
	graph *graph.Client
	log   *slog.Logger
	// db is the cluster's MySQL (from the coreapp's WA_DB_* environment):
	// cloudapi_messages (our id ↔ wamid) and cloudapi_inbound.
	db *sql.DB
	// sender is the delivery engine (limits, retries, unknown outcomes);
	// engine is the same when it is the package's Engine (its layout and
	// token state), store its attempt records.
	sender delivery.Sender
	engine *delivery.Engine
	store  delivery.Store
	// inbound reads what the webhook route stored for the shard.
	inbound InboundReader
	// ops are the account operations, registration and media (ops.go).
	ops *operations

	mu        sync.Mutex
	claim     Claim
	connected bool
	// lastErr says why the plugin is not connected (or why the last
	// connection ended); tokenErr is set by a Graph answer with code 190
	// (the access token is invalid or expired) and cleared by the next
	// request the Graph API accepts: Health shows it until fixed.
	lastErr  string
	tokenErr string
	lastConn int64
	// claimFirstConn is the first Conn of the current claim: Ack takes
	// any of the claim's Conns.
	claimFirstConn int64
	// endClaim ends the current claim's done context.
	endClaim context.CancelFunc
	// layout is the newest shard count the coreapp told.
	layout transport.Layout
	// redeliverAfter: see defaultRedeliverAfter (tests shorten it).
	redeliverAfter time.Duration
	// acked is the highest seq the coreapp acknowledged on the claim, by
	// shard (flow control and redelivery after a stall); ackedAt is when
	// it last moved.
	acked   map[int]uint64
	ackedAt time.Time
	// wakeCh is closed (and replaced) to make the Events pollers read
	// now; ackWakes asks the next Ack to do so (a poller waits for room
	// in the window).
	wakeCh   chan struct{}
	ackWakes bool
	// safetyPoll: see defaultSafetyPoll (tests shorten it).
	safetyPoll time.Duration
}

var _ transport.Transport = (*Transport)(nil)

// Options are the parts New does not build from the configuration itself.
type Options struct {
	DB      *sql.DB
	Logger  *slog.Logger
	Sender  delivery.Sender // nil: the delivery engine built from cfg
	Inbound InboundReader   // nil: the cloudapi_inbound reader on DB
}

// New returns the transport for cfg.
func New(cfg Config, o Options) *Transport {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	t := &Transport{
		cfg: cfg, log: log, db: o.DB,
		graph: graph.New(graph.Config{BaseURL: cfg.BaseURL, Version: cfg.GraphVersion, PhoneNumberID: cfg.PhoneNumberID, AccessToken: cfg.AccessToken}),
		acked: map[int]uint64{}, redeliverAfter: defaultRedeliverAfter,
		wakeCh: make(chan struct{}), safetyPoll: defaultSafetyPoll,
	}
	t.sender, t.inbound = o.Sender, o.Inbound
	if t.inbound == nil && o.DB != nil {
		t.inbound = dbReader{db: o.DB}
	}
	t.ops = newOperations(t.graph, o.DB, cfg.MediaDir, log)
	t.ops.sender = func() (graph.Sender, error) {
		c, err := t.Current()
		if err != nil {
			return graph.Sender{}, err
		}
		return c.sender(), nil
	}
	t.ops.tokenRefused = t.NoteTokenError
	return t
}

// Config returns the configuration (secrets included: never log it whole,
// its String hides them).
func (t *Transport) Config() Config { return t.cfg }

// Current returns the claim the plugin holds, failing with
// transport.ErrNotConnected without one and transport.ErrDeadlinePassed
// once its deadline has come.
func (t *Transport) Current() (Claim, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.currentLocked()
}

func (t *Transport) currentLocked() (Claim, error) {
	if !t.connected {
		if t.lastErr != "" {
			return Claim{}, fmt.Errorf("%w (%s)", transport.ErrNotConnected, t.lastErr)
		}
		return Claim{}, transport.ErrNotConnected
	}
	if transport.Until(t.claim.Deadline) <= 0 {
		t.connected, t.lastErr = false, "claim deadline reached"
		t.endClaimLocked()
		t.log.Warn("claim deadline reached: no more requests for the shard", "shard", t.claim.Shard, "epoch", t.claim.Epoch)
		return Claim{}, transport.ErrDeadlinePassed
	}
	return t.claim, nil
}

// Do makes a Graph API request for the shard the plugin holds: it refuses
// (sending nothing) without a live claim, bounds the request by the claim's
// deadline, names node, shard and epoch in its headers, and records a token
// error for Health. Errors are graph.Client.Do's.
func (t *Transport) Do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	c, err := t.Current()
	if err != nil {
		return fmt.Errorf("graph %s %s: %w", method, path, err)
	}
	rctx, cancel := c.bound(ctx)
	defer cancel()
	err = t.graph.Do(rctx, c.sender(), method, path, contentType, body, out)
	t.noteResult(err)
	return err
}

// DoUnclaimed makes a Graph API request that needs no claim (registration,
// which the transport contract allows without a connection).
func (t *Transport) DoUnclaimed(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	err := t.graph.Do(ctx, graph.Sender{}, method, path, contentType, body, out)
	t.noteResult(err)
	return err
}

// Graph is the Graph API client (for URLs and the phone number id).
func (t *Transport) Graph() *graph.Client { return t.graph }

// DB is the cluster's database (nil when the plugin runs without one).
func (t *Transport) DB() *sql.DB { return t.db }

// Logger is the plugin's logger.
func (t *Transport) Logger() *slog.Logger { return t.log }

// noteResult keeps a token error (code 190) for Health until a request
// succeeds again.
func (t *Transport) noteResult(err error) {
	var ge *graphapi.Error
	switch {
	case err == nil:
		t.mu.Lock()
		if t.tokenErr != "" {
			t.log.Info("the Graph API accepts the access token again")
		}
		t.tokenErr = ""
		t.mu.Unlock()
	case errors.As(err, &ge) && graphapi.Classify(ge) == graphapi.TokenInvalid:
		t.NoteTokenError(ge)
	}
}

// NoteTokenError records that the Graph API refused the access token
// (code 190, from any request or the delivery engine): Health reports it
// as LastError, so /v1/health shows it until the token is fixed.
func (t *Transport) NoteTokenError(ge *graphapi.Error) {
	msg := fmt.Sprintf("access token refused by the Graph API (code %d", ge.Code)
	if ge.ErrorSubcode != 0 {
		msg += fmt.Sprintf(", subcode %d", ge.ErrorSubcode)
	}
	msg += "): set a valid MC_CLOUDAPI_ACCESS_TOKEN"
	if m := strings.TrimSpace(ge.Message); m != "" {
		msg += " (" + redact(m, t.cfg.AccessToken) + ")"
	}
	t.mu.Lock()
	was := t.tokenErr
	t.tokenErr = msg
	t.mu.Unlock()
	if was == "" {
		t.log.Error("access token refused: sending stopped until it is fixed", "code", ge.Code, "subcode", ge.ErrorSubcode)
	}
}

// redact removes secret from s (a Graph message could quote it).
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}

// Open returns the transport for cfg with its delivery engine (posting
// through the transport's Poster, recording attempts in cloudapi_messages)
// and, when o.DB is set, its inbound reader.
func Open(cfg Config, o Options) (*Transport, error) {
	t := New(cfg, o)
	if t.sender != nil {
		return t, nil
	}
	if o.DB == nil {
		return nil, errors.New("cloud api transport: the delivery engine needs the cluster's database (WA_DB_*)")
	}
	dc := cfg.Delivery
	dc.Log = t.log
	t.store = delivery.NewSQLStore(o.DB)
	t.engine = delivery.NewEngine(dc, poster{t}, t.store)
	t.sender = t.engine
	return t, nil
}
