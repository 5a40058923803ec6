package simnet

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The transport ops beyond messaging travel in one frame pair: call
// {call, body} -> called {body} | rejected {error, reason}.
const (
	OpCall   = "call"
	OpCalled = "called"
	// RejectNoItem: what the op names does not exist (transport.ErrNoSuchItem).
	RejectNoItem = "no_such_item"
	// RejectUnsupported: the network has no such op.
	RejectUnsupported = "unsupported"
)

// restState is what the network keeps for those ops. Guarded by Server.mu.
type restState struct {
	// inbound is every message injected, by id: who sent it.
	inbound map[string]string
	reads   []Read
	// identities holds the contacts whose identity changed at least once
	// (by digits); the others have their first identity.
	identities map[string]*identity
	acks       []IdentityAck
}

type identity struct {
	generation   int
	created      int64 // Unix ms
	acknowledged bool
}

// Read is one inbound message the business marked read.
type Read struct {
	MessageID string `json:"message_id"`
	From      string `json:"from"`
	Shard     int    `json:"shard"`
	Epoch     uint64 `json:"epoch"`
	ConnID    int64  `json:"conn_id"`
	Node      string `json:"node"`
	At        int64  `json:"at"` // Unix ns
}

// IdentityAck is one acknowledgement the network accepted.
type IdentityAck struct {
	WAID string `json:"wa_id"`
	Hash string `json:"hash"`
	At   int64  `json:"at"` // Unix ns
}

// IdentityState is a contact's identity as GET /v1/identities lists it.
type IdentityState struct {
	WAID             string `json:"wa_id"`
	Hash             string `json:"hash"`
	CreatedTimestamp int64  `json:"created_timestamp"`
	Acknowledged     bool   `json:"acknowledged"`
}

// firstParty is the network's first-party sticker catalogue: fixed, as a
// real network's catalogue is not the business's to change.
var firstParty = transport.Stickerpacks{Packs: []transport.Stickerpack{
	{ID: "simnet-basics", Publisher: "simnet", Name: "Basics", Stickers: []transport.Sticker{
		{Index: "0", ID: "5c1e2a4e-0000-4000-8000-000000000001", Emojis: []string{"👍"}},
		{Index: "1", ID: "5c1e2a4e-0000-4000-8000-000000000002", Emojis: []string{"😂", "😃"}},
		{Index: "2", ID: "5c1e2a4e-0000-4000-8000-000000000003", Emojis: []string{"❤️"}},
	}},
	{ID: "simnet-animals", Publisher: "simnet", Name: "Animals", Stickers: []transport.Sticker{
		{Index: "0", ID: "5c1e2a4e-0000-4000-8000-000000000101", Emojis: []string{"🐥"}},
		{Index: "1", ID: "5c1e2a4e-0000-4000-8000-000000000102", Emojis: []string{"🐱", "😺"}},
	}},
}}

func (r *restState) noteInbound(id, from string) {
	if r.inbound == nil {
		r.inbound = map[string]string{}
	}
	r.inbound[id] = from
}

// identityHash is the hash of generation g of a contact's identity: a
// stand-in for the fingerprint of its keys, 8 bytes in base64 as the
// original's ("UKD6Y/5SqDU=").
func identityHash(digits string, g int) string {
	sum := sha256.Sum256([]byte("simnet identity " + digits + " " + strconv.Itoa(g)))
	return base64.StdEncoding.EncodeToString(sum[:8])
}

// accountDigitsLocked returns the digits of number when it is an account (the
// contact check's rule), else "".
func (s *Server) accountDigitsLocked(number string) string {
	d := string(digits(number))
	if _, bad := s.unreachable[d]; bad || len(d) < 8 || len(d) > 15 || d[0] == '0' {
		return ""
	}
	return d
}

func (s *Server) identityLocked(d string) IdentityState {
	st := IdentityState{WAID: d, Hash: identityHash(d, 0), CreatedTimestamp: s.baseUnix / 1e6, Acknowledged: true}
	if id := s.rest.identities[d]; id != nil {
		st.Hash, st.CreatedTimestamp, st.Acknowledged = identityHash(d, id.generation), id.created, id.acknowledged
	}
	return st
}

// ChangeIdentity gives number a new identity (as when its owner
// reinstalls on another phone); it is unacknowledged until the business
// acknowledges its hash. The contact's shard gets a user_identity_changed
// system message (shard 0 while no coreapp told the network the count).
func (s *Server) ChangeIdentity(number string) (IdentityState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.accountDigitsLocked(number)
	if d == "" {
		return IdentityState{}, fmt.Errorf("%q is not an account", number)
	}
	// A new identity is newer than the one it replaces even when both fall
	// in one millisecond (the first is dated at the network's start).
	prev := s.identityLocked(d).CreatedTimestamp
	if s.rest.identities == nil {
		s.rest.identities = map[string]*identity{}
	}
	id := s.rest.identities[d]
	if id == nil {
		id = &identity{}
		s.rest.identities[d] = id
	}
	id.generation++
	id.created, id.acknowledged = max(time.Now().UnixMilli(), prev+1), false
	st := s.identityLocked(d)
	// The business hears of it as the original did: an inbound system
	// message from the contact, user_identity_changed, with the new hash.
	payload, _ := json.Marshal(map[string]any{"type": "system", "system": map[string]string{
		"body": "The security code of " + d + " changed", "customer": d, "identity": st.Hash, "type": "user_identity_changed",
	}})
	s.nextIn++
	msgID := fmt.Sprintf("in-%d", s.nextIn)
	s.rest.noteInbound(msgID, d)
	s.emitLocked(0, Event{Kind: KindInbound, MessageID: msgID, Recipient: d, Timestamp: time.Now().Unix(), Payload: payload})
	return st, nil
}

// Identities lists the contacts whose identity changed.
func (s *Server) Identities() []IdentityState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]IdentityState, 0, len(s.rest.identities))
	for d := range s.rest.identities {
		out = append(out, s.identityLocked(d))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].WAID < out[j].WAID })
	return out
}

// Reads returns the inbound messages marked read, in the order marked.
func (s *Server) Reads() []Read {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Read{}, s.rest.reads...)
}

// callLocked answers a call frame. Every op needs an attached connection:
// the business speaks to the network only over its shard's connection.
func (s *Server) callLocked(c *conn, f Frame) {
	reject := func(kind, reason string) {
		c.out.push(Frame{Op: OpRejected, Seq: f.Seq, Error: kind, Reason: reason})
	}
	if c.iv == nil || s.shards[c.shard].open != c {
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: "not connected"})
		return
	}
	var result any = struct{}{}
	switch f.Call {
	case transport.OpMarkRead:
		var req transport.MarkReadRequest
		if err := json.Unmarshal(f.Body, &req); err != nil || req.MessageID == "" {
			reject(RejectInvalid, "mark_read needs a message_id")
			return
		}
		from, ok := s.rest.inbound[req.MessageID]
		if !ok {
			reject(RejectNoItem, fmt.Sprintf("no inbound message %q", req.MessageID))
			return
		}
		// A read receipt goes to the sender's chat, which the sender's
		// shard's connection carries. While the shard count changes the
		// network and the cluster may briefly disagree: a plain error, so
		// the client is told to retry rather than that its request is bad.
		if s.layout != 0 {
			if want := s.routeLocked(c.shard, from); want != c.shard {
				c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: fmt.Sprintf("message %q is from a contact of shard %d, not %d", req.MessageID, want, c.shard)})
				return
			}
		}
		s.rest.reads = append(s.rest.reads, Read{MessageID: req.MessageID, From: from, Shard: c.shard, Epoch: c.epoch,
			ConnID: c.iv.ID, Node: c.iv.Node, At: time.Now().UnixNano()})
	case transport.OpIdentity, transport.OpIdentityAck:
		var req transport.IdentityRequest
		if err := json.Unmarshal(f.Body, &req); err != nil {
			reject(RejectInvalid, "identity needs a wa_id")
			return
		}
		d := s.accountDigitsLocked(req.WAID)
		if d == "" {
			reject(RejectNoItem, fmt.Sprintf("%q is not an account", req.WAID))
			return
		}
		cur := s.identityLocked(d)
		if f.Call == transport.OpIdentity {
			result = transport.Identity{Hash: cur.Hash, CreatedTimestamp: cur.CreatedTimestamp, Acknowledged: cur.Acknowledged}
			break
		}
		if req.Hash != cur.Hash {
			reject(RejectInvalid, fmt.Sprintf("hash %q is not the latest identity of %s", req.Hash, d))
			return
		}
		if id := s.rest.identities[d]; id != nil {
			id.acknowledged = true
		}
		s.rest.acks = append(s.rest.acks, IdentityAck{WAID: d, Hash: req.Hash, At: time.Now().UnixNano()})
	case transport.OpStickerpacks:
		result = firstParty
	default:
		reject(RejectUnsupported, fmt.Sprintf("unknown call %q", f.Call))
		return
	}
	b, err := json.Marshal(result)
	if err != nil {
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: err.Error()})
		return
	}
	c.out.push(Frame{Op: OpCalled, Seq: f.Seq, Body: b})
}

// restRoutes adds the HTTP API of these ops: what the network was told,
// and a way for a test to change a contact's identity.
func (s *Server) restRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/reads", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]Read{"reads": s.Reads()})
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		acks := append([]IdentityAck{}, s.rest.acks...)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"identities": s.Identities(), "acks": acks})
	})
	mux.HandleFunc("POST /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			WAID string `json:"wa_id"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decode: %w", err))
			return
		}
		st, err := s.ChangeIdentity(in.WAID)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	// POST /v1/inbound/acked injects like POST /v1/inbound and answers only
	// once a coreapp acknowledged the message (stored it), within 10 s: a
	// test can then act on the message at once.
	mux.HandleFunc("POST /v1/inbound/acked", func(w http.ResponseWriter, r *http.Request) {
		id, _, ok := s.injectRequest(w, r)
		if !ok {
			return
		}
		for end := time.Now().Add(10 * time.Second); s.held(id); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				writeError(w, http.StatusGatewayTimeout, fmt.Errorf("inbound message %s not acknowledged within 10s", id))
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "acked": true})
	})
	mux.HandleFunc("GET /v1/stickerpacks", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, firstParty)
	})
}

// callError is the network's refusal of a call; it matches the transport
// error its kind stands for.
type callError struct{ kind, reason string }

func (e *callError) Error() string { return "refused by the network: " + e.reason }

func (e *callError) Unwrap() error {
	switch e.kind {
	case RejectNoItem:
		return transport.ErrNoSuchItem
	case RejectInvalid:
		return transport.ErrInvalidValue
	case RejectUnsupported:
		return transport.ErrUnsupported
	}
	return nil
}

// Call performs a transport op over this connection.
func (c *Conn) Call(ctx context.Context, op string, body []byte) ([]byte, error) {
	if len(body) == 0 {
		body = []byte("{}")
	}
	f, err := c.request(ctx, Frame{Op: OpCall, Call: op, Body: body})
	if err != nil {
		return nil, err
	}
	switch f.Op {
	case OpCalled:
		return f.Body, nil
	case OpRejected:
		return nil, &callError{kind: f.Error, reason: f.Reason}
	}
	return nil, fmt.Errorf("%s: unexpected reply %q", op, f.Op)
}

// callNetwork sends op over the current connection.
func (t *Transport) callNetwork(ctx context.Context, op string, body []byte) ([]byte, error) {
	t.mu.Lock()
	s := t.sess
	t.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("%s: %w", op, transport.ErrNotConnected)
	}
	out, err := s.conn.Call(ctx, op, body)
	if err != nil && s.conn.Err() != nil && !errors.Is(err, transport.ErrDeadlinePassed) {
		return nil, fmt.Errorf("%s: %w: %w", op, transport.ErrNotConnected, err)
	}
	return out, err
}

// held reports whether an inbound message id is still held
// unacknowledged by some shard. It takes Server.mu itself.
func (s *Server) held(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shards {
		for _, e := range sh.unacked {
			if e.Kind == KindInbound && e.MessageID == id {
				return true
			}
		}
	}
	return false
}

// injectRequest injects the inbound message a request's body describes;
// on failure it has answered the request.
func (s *Server) injectRequest(w http.ResponseWriter, r *http.Request) (id string, delivered, ok bool) {
	var in Inbound
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxFrame))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode inbound message: %w", err))
		return "", false, false
	}
	id, delivered, err := s.Inject(in)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return "", false, false
	}
	return id, delivered, true
}
