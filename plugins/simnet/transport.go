package simnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// closeTimeout bounds how long a disconnect waits for the network to
// confirm; the socket is closed either way.
const closeTimeout = 2 * time.Second

// Transport is the transport.Transport of the simulated network: what the
// transport-simnet plugin serves. It holds at most one connection, and
// enforces the deadline rule: it writes nothing to the network at or after
// the connection's deadline and closes the connection itself then.
type Transport struct {
	addr   string
	log    *slog.Logger
	events *fanout

	// connMu serializes Connect and Disconnect, which talk to the
	// network; mu guards the state and is never held across I/O.
	connMu  sync.Mutex
	mu      sync.Mutex
	sess    *session
	lastErr string
	// layout is the newest shard count the coreapp told (Connect,
	// Extend); every ping passes it on to the network.
	layout transport.Layout
}

// learnLayoutLocked keeps l if it is newer; it reports whether it was.
func (t *Transport) learnLayoutLocked(l transport.Layout) bool {
	if l.Shards <= 0 || l.Version <= t.layout.Version {
		return false
	}
	t.layout = l
	return true
}

// session is one attached connection. deadline and ended are guarded by
// Transport.mu.
type session struct {
	conn      *Conn
	shard     int
	epoch     uint64
	node      string
	id        int64
	keepalive time.Duration
	deadline  int64
	timer     *time.Timer
	ended     bool
}

var _ transport.Transport = (*Transport)(nil)

// NewTransport returns a Transport for the network at addr (host:port of
// its plugin listener).
func NewTransport(addr string, log *slog.Logger) *Transport {
	if log == nil {
		log = slog.Default()
	}
	return &Transport{addr: addr, log: log, events: newFanout(log)}
}

// Info implements transport.Transport; it asks the network over a short
// connection of its own.
func (t *Transport) Info(ctx context.Context) (transport.Info, error) {
	c, err := Dial(ctx, t.addr, nil)
	if err != nil {
		return transport.Info{}, fmt.Errorf("info: %w", err)
	}
	defer c.Abort()
	ka, err := c.Hello(ctx)
	if err != nil {
		return transport.Info{}, fmt.Errorf("info from %s: %w", t.addr, err)
	}
	return transport.Info{Name: "simnet", Version: ProtocolVersion, KeepaliveTimeout: ka}, nil
}

// Connect implements transport.Transport.
func (t *Transport) Connect(ctx context.Context, req transport.ConnectRequest) error {
	what := fmt.Sprintf("connect shard %d epoch %d", req.Shard, req.Epoch)
	if transport.Until(req.Deadline) <= 0 {
		return fmt.Errorf("%s: %w", what, transport.ErrDeadlinePassed)
	}
	t.connMu.Lock()
	defer t.connMu.Unlock()

	t.mu.Lock()
	t.learnLayoutLocked(req.Layout)
	req.Layout = t.layout
	cur := t.sess
	if cur != nil && transport.Until(cur.deadline) <= 0 {
		// Past its deadline but the timer has not run yet: it is over.
		t.expireLocked(cur, "deadline reached")
		cur = nil
	}
	if cur != nil && cur.shard == req.Shard && cur.epoch == req.Epoch {
		// Already there: the network would refuse a second connection
		// for the epoch, so this only moves the deadline.
		err := t.extendLocked(cur, req.Deadline)
		t.mu.Unlock()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	t.mu.Unlock()
	if cur != nil {
		t.closeSession(ctx, cur, fmt.Sprintf("replaced by a connect for shard %d epoch %d", req.Shard, req.Epoch))
	}

	t.events.newConnection() // before the network can push to the new one
	s, err := t.dial(ctx, req)
	if err != nil {
		if transport.Until(req.Deadline) <= 0 && !errors.Is(err, transport.ErrDeadlinePassed) {
			err = fmt.Errorf("%w: %w", transport.ErrDeadlinePassed, err)
		}
		t.mu.Lock()
		t.lastErr = err.Error()
		t.mu.Unlock()
		return fmt.Errorf("%s: %w", what, err)
	}
	t.mu.Lock()
	t.sess, t.lastErr = s, ""
	s.timer = time.AfterFunc(transport.Until(s.deadline), func() { t.onDeadline(s) })
	t.mu.Unlock()
	go t.keepAlive(s)
	go t.watch(s)
	t.log.Info("connected to the network", "shard", s.shard, "epoch", s.epoch, "node", s.node, "conn", s.id,
		"deadline_in", transport.Until(req.Deadline).String())
	return nil
}

// dial opens and attaches a connection; nothing is written after
// req.Deadline, and the whole handshake must finish before it.
func (t *Transport) dial(ctx context.Context, req transport.ConnectRequest) (*session, error) {
	ctx, cancel := context.WithDeadline(ctx, time.Now().Add(transport.Until(req.Deadline)))
	defer cancel()
	c, err := Dial(ctx, t.addr, t.events.publish)
	if err != nil {
		return nil, err
	}
	c.SetWriteBefore(req.Deadline)
	ka, err := c.Hello(ctx)
	if err != nil {
		c.Abort()
		return nil, err
	}
	id, err := c.ConnectLayout(ctx, req.Shard, req.Epoch, req.Node, req.Layout)
	if err != nil {
		c.Abort()
		return nil, err
	}
	return &session{conn: c, shard: req.Shard, epoch: req.Epoch, node: req.Node, id: id, keepalive: ka, deadline: req.Deadline}, nil
}

// onDeadline closes the session once its deadline has come, unless Extend
// moved it.
func (t *Transport) onDeadline(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.ended {
		return
	}
	if left := transport.Until(s.deadline); left > 0 {
		s.timer.Reset(left)
		return
	}
	t.expireLocked(s, "deadline reached")
}

// expireLocked ends s without writing anything: its deadline is gone, so
// not even a close frame may go out. The network sees the socket close.
func (t *Transport) expireLocked(s *session, reason string) {
	t.endLocked(s, reason)
	s.conn.Abort()
	t.log.Warn("connection closed at its deadline", "shard", s.shard, "epoch", s.epoch, "conn", s.id, "reason", reason)
}

// endLocked marks s ended, with reason as the Health's LastError.
func (t *Transport) endLocked(s *session, reason string) {
	if s.ended {
		return
	}
	s.ended = true
	if s.timer != nil {
		s.timer.Stop()
	}
	if t.sess == s {
		t.sess, t.lastErr = nil, reason
	}
}

// keepAlive pings every keepalive/4 while before the deadline; the network
// drops the connection after a silent keepalive.
func (t *Transport) keepAlive(s *session) {
	every := max(s.keepalive/4, 10*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.conn.Done():
			return
		case <-tick.C:
		}
		t.mu.Lock()
		ended, deadline, layout := s.ended, s.deadline, t.layout
		t.mu.Unlock()
		if ended || transport.Until(deadline) <= 0 {
			return // the deadline timer closes the connection
		}
		if quiet := s.conn.Silence(); quiet > s.keepalive*3/2 {
			// Not even a pong for over a keepalive: the network has
			// dropped us, though no FIN came (a cut path swallows it). Say
			// so, so the holder reconnects and, failing that, is replaced.
			// (Half a keepalive more spares a network merely slow to pong.)
			s.conn.fail(fmt.Errorf("no answer from the network for %v (keepalive %v)", quiet.Round(time.Millisecond), s.keepalive))
			return
		}
		if err := s.conn.PingLayout(layout); err != nil && !errors.Is(err, transport.ErrDeadlinePassed) {
			return // the connection failed; watch records why
		}
	}
}

// watch records a connection the network ended or that failed.
func (t *Transport) watch(s *session) {
	<-s.conn.Done()
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.ended {
		return
	}
	reason := "connection lost: " + s.conn.Err().Error()
	t.endLocked(s, reason)
	t.log.Warn("connection to the network lost", "shard", s.shard, "epoch", s.epoch, "conn", s.id, "err", s.conn.Err())
}

// closeSession ends s and closes its connection politely (see Conn.Close).
func (t *Transport) closeSession(ctx context.Context, s *session, reason string) {
	t.mu.Lock()
	t.endLocked(s, reason)
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()
	if err := s.conn.Close(ctx); err != nil {
		t.log.Warn("network did not confirm the close; socket closed anyway", "shard", s.shard, "epoch", s.epoch, "err", err)
	}
	t.log.Info("disconnected from the network", "shard", s.shard, "epoch", s.epoch, "conn", s.id, "reason", reason)
}

// Extend implements transport.Transport.
func (t *Transport) Extend(_ context.Context, epoch uint64, deadline int64, layout transport.Layout) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.learnLayoutLocked(layout) && t.sess != nil && !t.sess.ended {
		// A new count: tell the network now rather than at the next
		// keepalive ping (write does not wait for an answer).
		go t.sess.conn.PingLayout(layout)
	}
	s := t.sess
	if s == nil {
		if t.lastErr != "" {
			return fmt.Errorf("extend epoch %d: %w (%s)", epoch, transport.ErrNotConnected, t.lastErr)
		}
		return fmt.Errorf("extend epoch %d: %w", epoch, transport.ErrNotConnected)
	}
	if s.epoch != epoch {
		return fmt.Errorf("extend epoch %d: connected with epoch %d: %w", epoch, s.epoch, transport.ErrEpochMismatch)
	}
	if err := t.extendLocked(s, deadline); err != nil {
		return fmt.Errorf("extend epoch %d: %w", epoch, err)
	}
	return nil
}

// extendLocked moves s's deadline. A session whose deadline has passed is
// closed, not revived, and so is one given a deadline in the past.
func (t *Transport) extendLocked(s *session, deadline int64) error {
	if transport.Until(s.deadline) <= 0 {
		t.expireLocked(s, "deadline reached")
		return fmt.Errorf("connection deadline already passed: %w", transport.ErrDeadlinePassed)
	}
	if transport.Until(deadline) <= 0 {
		t.expireLocked(s, "deadline moved into the past")
		return fmt.Errorf("new deadline is in the past: %w", transport.ErrDeadlinePassed)
	}
	s.deadline = deadline
	s.conn.SetWriteBefore(deadline)
	s.timer.Reset(transport.Until(deadline))
	return nil
}

// Disconnect implements transport.Transport.
func (t *Transport) Disconnect(ctx context.Context) error {
	t.connMu.Lock()
	defer t.connMu.Unlock()
	t.mu.Lock()
	s := t.sess
	t.mu.Unlock()
	if s != nil {
		t.closeSession(ctx, s, "disconnected")
	}
	return nil
}

// Close disconnects; the plugin's main calls it when the host leaves.
func (t *Transport) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	return t.Disconnect(ctx)
}

// Health implements transport.Transport.
func (t *Transport) Health(context.Context) (transport.Health, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.sess
	if s == nil {
		return transport.Health{LastError: t.lastErr}, nil
	}
	return transport.Health{
		Connected: !s.ended && transport.Until(s.deadline) > 0,
		Shard:     s.shard, Epoch: s.epoch, Deadline: s.deadline, LastError: t.lastErr,
	}, nil
}

// Send implements transport.Transport. Messages without an ID or with a
// body that is not JSON fail on their own without reaching the network.
func (t *Transport) Send(ctx context.Context, msgs []transport.Message) ([]transport.SendResult, error) {
	t.mu.Lock()
	s := t.sess
	var deadline int64
	if s != nil {
		deadline = s.deadline
	}
	t.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("send: %w", transport.ErrNotConnected)
	}
	if transport.Until(deadline) <= 0 {
		return nil, fmt.Errorf("send: %w", transport.ErrDeadlinePassed)
	}
	results := make([]transport.SendResult, len(msgs))
	// frames are the send frames, each under maxSendFrame encoded;
	// index maps their messages back to msgs.
	var frames [][]Message
	var index [][]int
	size := maxSendFrame // forces a new frame for the first message
	for i, m := range msgs {
		results[i].ID = m.ID
		w := Message{ID: m.ID, To: m.To, Type: m.Type, Body: m.Body}
		n := 0
		switch {
		case m.ID == "":
			results[i].Status, results[i].Error = transport.SendFailed, "missing id"
			continue
		case len(m.Body) > 0 && !json.Valid(m.Body):
			results[i].Status, results[i].Error = transport.SendFailed, "body is not valid JSON"
			continue
		default:
			n = encodedSize(w)
		}
		if n > maxSendFrame {
			// It can never be sent: failing the batch would send it
			// again forever and hold up every later message.
			results[i].Status = transport.SendFailed
			results[i].Error = fmt.Sprintf("message of %d bytes is larger than the network's frame limit (%d bytes)", n, maxSendFrame)
			continue
		}
		if size+n > maxSendFrame {
			frames, index, size = append(frames, nil), append(index, nil), 0
		}
		k := len(frames) - 1
		frames[k], index[k], size = append(frames[k], w), append(index[k], i), size+n
	}
	sent := 0
	for k, wire := range frames {
		res, err := s.conn.Send(ctx, wire)
		if err != nil {
			// The frames before this one were answered; the host sends
			// the whole batch again and the network drops the copies.
			return nil, fmt.Errorf("send %d messages on shard %d epoch %d (%d sent before): %w", len(wire), s.shard, s.epoch, sent, err)
		}
		for j, r := range res {
			sr := &results[index[k][j]]
			switch r.Status {
			case ResultAccepted:
				sr.Status = transport.SendAccepted
			case ResultDuplicate:
				sr.Status = transport.SendDuplicate
			default:
				sr.Status, sr.Error = transport.SendFailed, r.Error
			}
		}
		sent += len(wire)
	}
	return results, nil
}

// maxSendFrame bounds the encoded messages of one send frame: maxFrame less
// room for the frame's own fields.
const maxSendFrame = maxFrame - 4<<10

// encodedSize is the bytes m takes in a send frame, its comma included.
// json.Marshal may grow a body (it escapes <, > and &), so the size is
// measured, not estimated.
func encodedSize(m Message) int {
	b, err := json.Marshal(m)
	if err != nil {
		return maxFrame + 1 // cannot be encoded: cannot be sent
	}
	return len(b) + 1
}

// current returns the live session for shard, or ErrNotConnected.
func (t *Transport) current(what string, shard int) (*session, error) {
	t.mu.Lock()
	s := t.sess
	t.mu.Unlock()
	if s == nil || (shard >= 0 && s.shard != shard) {
		return nil, fmt.Errorf("%s shard %d: %w", what, shard, transport.ErrNotConnected)
	}
	return s, nil
}

// Ack implements transport.Transport.
func (t *Transport) Ack(ctx context.Context, shard int, conn int64, seq uint64) error {
	s, err := t.current("ack", shard)
	if err != nil {
		return err
	}
	if s.id != conn {
		// The events came over an earlier connection: acknowledging them
		// on this one could acknowledge others (a new stream's).
		return fmt.Errorf("ack shard %d connection %d: now on connection %d: %w", shard, conn, s.id, transport.ErrNotConnected)
	}
	if err := s.conn.Ack(ctx, seq); err != nil {
		return fmt.Errorf("ack shard %d up to %d: %w", shard, seq, err)
	}
	return nil
}

// CheckContacts implements transport.Transport.
func (t *Transport) CheckContacts(ctx context.Context, inputs []string) ([]transport.ContactResult, error) {
	s, err := t.current("check contacts", -1)
	if err != nil {
		return nil, err
	}
	res, err := s.conn.Check(ctx, inputs)
	if err != nil {
		return nil, fmt.Errorf("check %d contacts: %w", len(inputs), err)
	}
	out := make([]transport.ContactResult, len(res))
	for i, r := range res {
		out[i] = transport.ContactResult{Input: r.Input, Status: r.Status, WAID: r.WAID}
	}
	return out, nil
}

// RequestCode implements transport.Transport over a short connection of
// its own, like Info: registration needs no shard connection.
func (t *Transport) RequestCode(ctx context.Context, req transport.RegistrationRequest) (transport.RegistrationResult, error) {
	c, err := Dial(ctx, t.addr, nil)
	if err != nil {
		return transport.RegistrationResult{}, fmt.Errorf("request code: %w", err)
	}
	defer c.Abort()
	vname, registered, err := c.Register(ctx, RegistrationFrame{
		CC: req.CC, PhoneNumber: req.Phone, Method: req.Method, Cert: req.Cert, Pin: req.Pin,
	})
	if err != nil {
		return transport.RegistrationResult{}, fmt.Errorf("request code for +%s %s: %w", req.CC, req.Phone, err)
	}
	return transport.RegistrationResult{VName: vname, AlreadyRegistered: registered}, nil
}

// VerifyCode implements transport.Transport over a short connection of its
// own.
func (t *Transport) VerifyCode(ctx context.Context, req transport.VerifyRequest) error {
	c, err := Dial(ctx, t.addr, nil)
	if err != nil {
		return fmt.Errorf("verify code: %w", err)
	}
	defer c.Abort()
	if err := c.Verify(ctx, RegistrationFrame{CC: req.CC, PhoneNumber: req.Phone, Code: req.Code}); err != nil {
		return fmt.Errorf("verify code for +%s %s: %w", req.CC, req.Phone, err)
	}
	return nil
}

// Events implements transport.Transport.
func (t *Transport) Events(ctx context.Context) (<-chan transport.Event, error) {
	out := make(chan transport.Event)
	t.events.subscribe(ctx, func(q []transport.Event) int {
		for i, e := range q {
			select {
			case out <- e:
			case <-ctx.Done():
				return i
			}
		}
		return len(q)
	}, func() { close(out) })
	return out, nil
}

// EventBatches implements transport.EventBatcher: the events that came
// while the previous batch was handed over go together.
func (t *Transport) EventBatches(ctx context.Context) (<-chan []transport.Event, error) {
	out := make(chan []transport.Event)
	t.events.subscribe(ctx, func(q []transport.Event) int {
		select {
		case out <- q:
			return len(q)
		case <-ctx.Done():
			return 0
		}
	}, func() { close(out) })
	return out, nil
}

// fanout hands the events of whichever connection is current to every
// subscriber. Events that arrive while nobody subscribes are kept for the
// next subscriber, and none is dropped: the network pushes at most its
// window of unacknowledged events per connection (flow control), which
// bounds both the backlog and each subscriber's queue. When a new
// connection opens, the backlog of earlier ones is let go: the network
// pushes every unacknowledged event again to the new connection.
type fanout struct {
	log     *slog.Logger
	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	backlog []transport.Event
}

type subscriber struct {
	mu   sync.Mutex
	q    []transport.Event
	wake chan struct{}
}

func newFanout(log *slog.Logger) *fanout {
	return &fanout{log: log, subs: map[*subscriber]struct{}{}}
}

// publish is called by a connection's reader; it never blocks on a
// subscriber.
func (f *fanout) publish(e Event) {
	te := transport.Event{
		Kind: transport.EventKind(e.Kind), MessageID: e.MessageID, Status: e.Status,
		Recipient: e.Recipient, Timestamp: e.Timestamp, Payload: []byte(e.Payload),
		Shard: e.Shard, Seq: e.Seq, Stream: e.Stream, Conn: e.Conn,
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.subs) == 0 {
		f.keepLocked(te)
		return
	}
	for s := range f.subs {
		s.mu.Lock()
		s.q = append(s.q, te)
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (f *fanout) keepLocked(events ...transport.Event) {
	f.backlog = append(f.backlog, events...)
}

// newConnection lets go of the backlog: a new connection gets every
// unacknowledged event again.
func (f *fanout) newConnection() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.backlog) > 0 {
		f.log.Info("new connection: the network pushes the kept events again", "kept", len(f.backlog))
		f.backlog = nil
	}
}

// subscribe hands the events to deliver, in order, until ctx ends, then
// calls done. deliver returns how many of q it handed over (fewer only
// once ctx ended); the rest go back to the backlog.
func (f *fanout) subscribe(ctx context.Context, deliver func(q []transport.Event) int, done func()) {
	s := &subscriber{wake: make(chan struct{}, 1)}
	f.mu.Lock()
	f.subs[s] = struct{}{}
	if len(f.backlog) > 0 {
		s.q, f.backlog = f.backlog, nil
		s.wake <- struct{}{}
	}
	f.mu.Unlock()
	go func() {
		defer done()
		for {
			select {
			case <-ctx.Done():
				f.unsubscribe(s, nil)
				return
			case <-s.wake:
			}
			s.mu.Lock()
			q := s.q
			s.q = nil
			s.mu.Unlock()
			if len(q) == 0 {
				continue
			}
			if n := deliver(q); n < len(q) {
				f.unsubscribe(s, q[n:])
				return
			}
		}
	}()
}

// unsubscribe removes s; if it was the last subscriber, the events it did
// not deliver go back to the backlog for the next one.
func (f *fanout) unsubscribe(s *subscriber, undelivered []transport.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, s)
	s.mu.Lock()
	undelivered = append(undelivered, s.q...)
	s.q = nil
	s.mu.Unlock()
	if len(f.subs) == 0 && len(undelivered) > 0 {
		rest := f.backlog
		f.backlog = nil
		f.keepLocked(undelivered...)
		f.keepLocked(rest...)
	}
}

// Call implements transport.Transport: the simulated network's account and
// message operations beyond sending. Each op is one case; the network
// records what it was told and shows it on its HTTP API.
func (t *Transport) Call(ctx context.Context, op string, body []byte) ([]byte, error) {
	switch op {
	case transport.OpSetProfileAbout, transport.OpSetProfilePhoto, transport.OpDeleteProfilePhoto,
		transport.OpSetBusinessProfile, transport.OpSetTwoStep, transport.OpDeleteTwoStep:
		return t.account(ctx, op, body)
	case transport.OpMarkRead, transport.OpIdentity, transport.OpIdentityAck, transport.OpStickerpacks:
		return t.callNetwork(ctx, op, body)
	default:
		return nil, fmt.Errorf("%w: %q", transport.ErrUnsupported, op)
	}
}
