package simnet

import (
	"bufio"
	"bytes"
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mcshard "github.com/multiconnect/multiconnect/internal/shard"
)

// Reasons an interval ended (Interval.EndReason).
const (
	EndClosed     = "closed"     // the plugin sent close
	EndEOF        = "eof"        // the plugin closed the socket (or died) without close
	EndKeepalive  = "keepalive"  // silent for longer than the keepalive timeout
	EndSuperseded = "superseded" // a newer epoch connected for the shard
	EndError      = "error"      // read error or protocol violation
	EndShutdown   = "shutdown"   // the network itself stopped
)

// Config configures a Server.
type Config struct {
	// Keepalive is how long a connection may stay silent before the
	// network drops it. Default 1s.
	Keepalive time.Duration
	// StatusDelay is the pause before each of the sent, delivered and
	// read statuses of an accepted message. Zero emits them at once.
	StatusDelay time.Duration
	// Logger receives the network's logs. Default slog.Default().
	Logger *slog.Logger
}

// Server is the simulated messaging network. Create it with NewServer, feed
// it plugin connections with Serve and HTTP API connections with ServeAPI
// (or mount Handler), and stop it with Close.
type Server struct {
	cfg Config
	log *slog.Logger

	// All times are nanoseconds on Go's monotonic clock since base, so
	// a wall-clock step cannot reorder intervals; they are reported as
	// baseUnix+offset, Unix nanoseconds as of the server's start.
	base     time.Time
	baseUnix int64
	// stream names this run's event numbering (Event.Stream): a restarted
	// network numbers from 1 again, under a new name.
	stream string

	// readSlack delays the read deadline that drops a silent connection.
	// Tests set it to exercise the connect-time silence check, which
	// otherwise only matters when the reader is late.
	readSlack time.Duration

	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
	apis      []*httpServer
	conns     map[*conn]struct{}
	nextConn  int64
	intervals []*Interval
	shards    map[int]*shardState
	seen      map[string]struct{}
	received  []Received
	// duplicates counts sends of ids the network already had: a sender
	// sending again what might not have arrived.
	duplicates int
	nextIn     int64
	// unreachable holds the digits of numbers that are not accounts:
	// contact checks call them invalid and sends to them fail.
	unreachable map[string]struct{}
	// registrations is every number a code was requested for, by regKey.
	registrations map[string]*Registration
	nextReg       int64
	// account is the account-level settings the network was told
	// (account.go).
	account accountState
	// layout is the newest shard count the coreapps told (connect and
	// ping frames), by shard map version; zero until one does. Events go
	// to their recipient's shard under it (see routeLocked).
	layout        int
	layoutVersion int64
	// statuses are the sent, delivered and read statuses scheduled and
	// not emitted yet (see emitStatusesLocked).
	statuses      statusHeap
	nextStatus    uint64
	statusRunning bool
	statusWake    chan struct{}
	// rest is what the API surface beyond messaging keeps: inbound
	// messages and their reads, identities (see rest.go).
	rest restState
}

// shardState is what the network knows about one shard.
type shardState struct {
	newest   uint64
	hasEpoch bool
	open     *conn
	// unacked is every event not yet acknowledged, in Seq order: the
	// network keeps an event until the coreapp says it stored it, and
	// pushes what is left to each new connection of the shard.
	unacked   []Event
	nextEvent uint64
	pushedTo  uint64 // highest Seq pushed to the open connection
	acked     uint64 // highest Seq acknowledged
	// renumbered are the Seqs this stream gave to events a layout change
	// moved in from another shard's stream (see learnLayoutLocked): such a
	// number says where the move put the event, behind what the stream
	// held, not when the network first emitted it, so a test comparing
	// emission order must leave it out. At most maxRenumbered, newest kept.
	renumbered []uint64
	// What crossed so far (ShardState): events pushed, acks taken.
	pushed, acks int
}

// maxRenumbered bounds shardState.renumbered.
const maxRenumbered = 100000

// pushWindow bounds the events pushed to a connection and not yet
// acknowledged: the rest wait until acks come (flow control), so the
// plugin and the coreapp never queue more than this for a shard, however
// far behind they are. The coreapp acknowledges each stored batch, so a
// window of several batches keeps events flowing at full speed.
const pushWindow = 4096

// newStream names an event numbering: random, so no two runs share one.
func newStream() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic("simnet: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// Interval is one attached connection as the network recorded it.
type Interval struct {
	ID        int64  `json:"id"`
	Shard     int    `json:"shard"`
	Epoch     uint64 `json:"epoch"`
	Node      string `json:"node"`
	Remote    string `json:"remote"`
	Start     int64  `json:"start"`      // Unix ns
	End       int64  `json:"end"`        // Unix ns; 0 while open
	EndReason string `json:"end_reason"` // one of the End* constants
	Open      bool   `json:"open"`
	LastFrame int64  `json:"last_frame"` // Unix ns of the last frame accepted
}

// Received is one message the network accepted, with what delivered it.
type Received struct {
	Seq    int64           `json:"seq"` // arrival order, network-wide, from 1
	ID     string          `json:"id"`
	To     string          `json:"to"`
	Type   string          `json:"type,omitempty"`
	Body   json.RawMessage `json:"body,omitempty"`
	Shard  int             `json:"shard"`
	Epoch  uint64          `json:"epoch"`
	ConnID int64           `json:"conn_id"`
	Node   string          `json:"node"`
	At     int64           `json:"at"` // Unix ns
}

// conn is one plugin TCP connection. Fields after mu-comment are guarded by
// Server.mu.
type conn struct {
	s      *Server
	nc     net.Conn
	remote string
	out    *outbox

	// lastRead is when a Read last returned data (server ns). It is
	// stamped outside the lock so that a frame that arrived in time
	// but is not processed yet still counts as a sign of life.
	lastRead atomic.Int64

	// Guarded by Server.mu.
	lastFrame int64
	ended     bool
	iv        *Interval // nil until connect succeeds
	shard     int
	epoch     uint64
}

// NewServer returns a network with no listeners yet.
func NewServer(cfg Config) *Server {
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	now := time.Now()
	return &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		base:       now,
		baseUnix:   now.UnixNano(),
		stream:     newStream(),
		done:       make(chan struct{}),
		statusWake: make(chan struct{}, 1),
		conns:      map[*conn]struct{}{},
		shards:     map[int]*shardState{},
		seen:       map[string]struct{}{},

		unreachable:   map[string]struct{}{},
		registrations: map[string]*Registration{},
	}
}

// Keepalive is the network's keepalive timeout.
func (s *Server) Keepalive() time.Duration { return s.cfg.Keepalive }

func (s *Server) now() int64           { return int64(time.Since(s.base)) }
func (s *Server) unix(t int64) int64   { return s.baseUnix + t }
func (s *Server) at(t int64) time.Time { return s.base.Add(time.Duration(t)) }
func (s *Server) keepalive() int64     { return int64(s.cfg.Keepalive) }
func (s *Server) shard(n int) *shardState {
	sh := s.shards[n]
	if sh == nil {
		sh = &shardState{}
		s.shards[n] = sh
	}
	return sh
}

// Serve accepts plugin connections on ln until Close; it returns nil once
// the server is closed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("simnet: server closed")
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.log.Info("accepting plugin connections", "addr", ln.Addr().String(), "keepalive", s.cfg.Keepalive.String())
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("simnet: accept on %s: %w", ln.Addr(), err)
		}
		c := &conn{s: s, nc: nc, remote: nc.RemoteAddr().String(), out: newOutbox()}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		c.lastFrame = s.now()
		c.lastRead.Store(c.lastFrame)
		s.conns[c] = struct{}{}
		s.wg.Add(2)
		s.mu.Unlock()
		go func() { defer s.wg.Done(); c.out.run(nc) }()
		go func() { defer s.wg.Done(); s.read(c) }()
	}
}

// Close stops the network: listeners and API servers close, and every
// connection ends with EndShutdown.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	var errs []error
	for _, ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	apis := s.apis
	now := s.now()
	for c := range s.conns {
		s.endLocked(c, EndShutdown, now, &Frame{Op: OpClosed, Reason: EndShutdown})
	}
	s.mu.Unlock()
	for _, a := range apis {
		if err := a.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// stampReader records when data arrives on a connection.
type stampReader struct{ c *conn }

func (r stampReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	if n > 0 {
		r.c.lastRead.Store(r.c.s.now())
	}
	return n, err
}

// read handles one connection's frames until it ends. A read deadline at
// last frame + keepalive is what drops a silent connection.
func (s *Server) read(c *conn) {
	sc := bufio.NewScanner(stampReader{c})
	sc.Buffer(make([]byte, 0, 64<<10), maxFrame)
	sc.Split(splitFrames)
	for {
		s.mu.Lock()
		if c.ended {
			s.mu.Unlock()
			return
		}
		limit := c.lastFrame + s.keepalive()
		s.mu.Unlock()
		if err := c.nc.SetReadDeadline(s.at(limit).Add(s.readSlack)); err != nil {
			s.end(c, EndError, nil, "set read deadline", err)
			return
		}
		if !sc.Scan() {
			err := sc.Err()
			var ne net.Error
			switch {
			case err == nil:
				s.end(c, EndEOF, nil, "", nil)
			case errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
				s.mu.Lock()
				s.endLocked(c, EndKeepalive, c.lastFrame+s.keepalive(), &Frame{Op: OpClosed, Reason: EndKeepalive})
				s.mu.Unlock()
			case errors.Is(err, net.ErrClosed):
				// Either we ended it (then this is a no-op) or the
				// writer closed it after a failed write.
				s.end(c, EndError, nil, "write", errors.New("connection closed after a failed write"))
			default:
				s.end(c, EndError, nil, "read", err)
			}
			return
		}
		arrival := c.lastRead.Load()
		if !s.frame(c, sc.Bytes(), arrival) {
			return
		}
	}
}

// splitFrames splits on newlines. Unlike bufio.ScanLines it drops an
// unterminated tail at EOF: a frame cut short (say, by the plugin's write
// deadline) was never sent and must not be processed.
func splitFrames(data []byte, _ bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	return 0, nil, nil
}

// end ends c now, logging err if there is one.
func (s *Server) end(c *conn, reason string, final *Frame, what string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && !c.ended {
		s.log.Warn("plugin connection failed", "remote", c.remote, "op", what, "err", err)
	}
	s.endLocked(c, reason, s.now(), final)
}

// frame processes one frame that arrived at arrival. It reports whether
// the connection goes on.
func (s *Server) frame(c *conn, line []byte, arrival int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.ended {
		return false
	}
	// The read deadline normally stops a late frame, but one can still
	// get here (deadline raced with arrival, or readSlack): a frame from
	// a connection that was already silent too long is never processed.
	if arrival-c.lastFrame > s.keepalive() {
		s.endLocked(c, EndKeepalive, c.lastFrame+s.keepalive(), &Frame{Op: OpClosed, Reason: EndKeepalive})
		return false
	}
	c.lastFrame = arrival
	if c.iv != nil {
		c.iv.LastFrame = s.unix(arrival)
	}
	var f Frame
	if err := json.Unmarshal(line, &f); err != nil {
		s.log.Warn("malformed frame; closing", "remote", c.remote, "err", err)
		s.endLocked(c, EndError, s.now(), &Frame{Op: OpClosed, Reason: "malformed frame: " + err.Error()})
		return false
	}
	switch f.Op {
	case OpHello:
		c.out.push(Frame{Op: OpHello, Seq: f.Seq, KeepaliveMS: s.cfg.Keepalive.Milliseconds()})
	case OpPing:
		if c.iv != nil {
			s.learnLayoutLocked(f.Shards, f.MapVersion)
		}
		c.out.push(Frame{Op: OpPong, Seq: f.Seq})
	case OpConnect:
		s.connectLocked(c, f)
	case OpSend:
		s.sendLocked(c, f, arrival)
	case OpAck:
		s.ackLocked(c, f)
	case OpCheck:
		s.checkLocked(c, f)
	case OpRegister:
		s.registerLocked(c, f)
	case OpVerify:
		s.verifyLocked(c, f)
	case OpAccount:
		s.accountLocked(c, f)
	case OpCall:
		s.callLocked(c, f)
	case OpClose:
		s.endLocked(c, EndClosed, arrival, &Frame{Op: OpClosed, Seq: f.Seq, Reason: EndClosed})
		return false
	default:
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: fmt.Sprintf("unknown op %q", f.Op)})
	}
	return true
}

// silentLocked reports whether c has been silent for longer than the
// keepalive at now, counting data read but not yet processed as life.
func (s *Server) silentLocked(c *conn, now int64) bool {
	limit := c.lastFrame + s.keepalive()
	if now <= limit {
		return false
	}
	lr := c.lastRead.Load()
	return lr <= c.lastFrame || lr > limit
}

// connectLocked applies the network's rules to a connect frame.
func (s *Server) connectLocked(c *conn, f Frame) {
	refuse := func(reason string) {
		s.log.Info("connect refused", "shard", f.Shard, "epoch", f.Epoch, "node", f.Node, "reason", reason)
		c.out.push(Frame{Op: OpRefused, Seq: f.Seq, Shard: f.Shard, Epoch: f.Epoch, Reason: reason})
	}
	if c.iv != nil {
		refuse(fmt.Sprintf("this connection already holds shard %d epoch %d", c.shard, c.epoch))
		return
	}
	if f.Shard < 0 {
		refuse(fmt.Sprintf("invalid shard %d", f.Shard))
		return
	}
	// The layout first: events it moves to this shard are pushed to the
	// new connection below.
	s.learnLayoutLocked(f.Shards, f.MapVersion)
	sh := s.shard(f.Shard)
	now := s.now()
	// An open connection that has been silent past the keepalive is
	// already gone as far as the network is concerned, even if its
	// reader has not noticed yet: it ends when its keepalive ran out,
	// before this connect, so it cannot overlap with it.
	if old := sh.open; old != nil && s.silentLocked(old, now) {
		s.endLocked(old, EndKeepalive, old.lastFrame+s.keepalive(), &Frame{Op: OpClosed, Reason: EndKeepalive})
	}
	if sh.hasEpoch && f.Epoch < sh.newest {
		refuse(fmt.Sprintf("epoch %d is older than the shard's newest epoch %d", f.Epoch, sh.newest))
		return
	}
	old := sh.open
	if old != nil && old.epoch == f.Epoch {
		refuse(fmt.Sprintf("epoch %d is already connected (connection %d from %s)", f.Epoch, old.iv.ID, old.iv.Node))
		return
	}
	s.nextConn++
	c.iv = &Interval{
		ID: s.nextConn, Shard: f.Shard, Epoch: f.Epoch, Node: f.Node, Remote: c.remote,
		Start: s.unix(now), Open: true, LastFrame: s.unix(c.lastFrame),
	}
	c.shard, c.epoch = f.Shard, f.Epoch
	s.intervals = append(s.intervals, c.iv)
	sh.newest, sh.hasEpoch = f.Epoch, true
	c.out.push(Frame{Op: OpConnected, Seq: f.Seq, Shard: f.Shard, Epoch: f.Epoch, ConnID: c.iv.ID})
	s.log.Info("connected", "conn", c.iv.ID, "shard", f.Shard, "epoch", f.Epoch, "node", f.Node, "remote", c.remote)
	if old != nil {
		// A newer epoch while an older one is still alive: the real
		// network would ban the account. Accept the newer one (it is
		// the legitimate holder) and end the older one; its interval
		// ends after this one started, so the overlap shows.
		s.log.Error("VIOLATION: two connections for one shard",
			"shard", f.Shard, "old_conn", old.iv.ID, "old_epoch", old.epoch, "old_node", old.iv.Node,
			"new_conn", c.iv.ID, "new_epoch", f.Epoch, "new_node", f.Node)
		end := s.now()
		if end <= now {
			end = now + 1
		}
		s.endLocked(old, EndSuperseded, end, &Frame{Op: OpClosed,
			Reason: fmt.Sprintf("%s by epoch %d (connection %d)", EndSuperseded, f.Epoch, c.iv.ID)})
	}
	sh.open = c
	sh.pushedTo = sh.acked
	s.pushLocked(sh)
}

// pushLocked pushes to the shard's open connection its unacknowledged
// events that were not pushed to it yet, in Seq order, up to pushWindow
// past the last acknowledgement.
func (s *Server) pushLocked(sh *shardState) {
	c := sh.open
	if c == nil {
		return
	}
	i := sort.Search(len(sh.unacked), func(i int) bool { return sh.unacked[i].Seq > sh.pushedTo })
	for _, e := range sh.unacked[i:] {
		if e.Seq > sh.acked+pushWindow {
			return
		}
		e.Stream, e.Conn = s.stream, c.iv.ID
		sh.pushed++
		c.out.push(eventFrame(e))
		sh.pushedTo = e.Seq
	}
}

// sendLocked stores the new messages of a send frame and schedules their
// statuses.
func (s *Server) sendLocked(c *conn, f Frame, arrival int64) {
	if c.iv == nil || s.shards[c.shard].open != c {
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: "not connected"})
		return
	}
	results := make([]Result, len(f.Msgs))
	var accepted []Message
	for i, m := range f.Msgs {
		results[i].ID = m.ID
		switch _, dup := s.seen[m.ID]; {
		case m.ID == "":
			results[i].Status, results[i].Error = ResultError, "missing id"
		case dup:
			results[i].Status = ResultDuplicate
			s.duplicates++
		case !checked(&results[i], m):
		default:
			s.seen[m.ID] = struct{}{}
			s.received = append(s.received, Received{
				Seq: int64(len(s.received) + 1), ID: m.ID, To: m.To, Type: m.Type, Body: m.Body,
				Shard: c.shard, Epoch: c.epoch, ConnID: c.iv.ID, Node: c.iv.Node, At: s.unix(arrival),
			})
			results[i].Status = ResultAccepted
			accepted = append(accepted, m)
		}
	}
	c.out.push(Frame{Op: OpSent, Seq: f.Seq, Results: results})
	if len(accepted) > 0 {
		shard := c.shard
		var ok, failed []Message
		for _, m := range accepted {
			if _, bad := s.unreachable[string(digits(m.To))]; bad {
				failed = append(failed, m)
			} else {
				ok = append(ok, m)
			}
		}
		s.emitStatusesLocked(shard, ok, failed, arrival)
	}
}

// emitStatusesLocked emits failed at once for the messages whose recipient
// is unreachable, and schedules sent, delivered and read for msgs, each
// StatusDelay after the previous, counted from arrival (server ns).
//
// One goroutine emits every scheduled status in (due time, scheduling)
// order, so a recipient's statuses follow the order its messages reached
// the network even when two connections send them microseconds apart (a
// re-shard: the old shard's batch in flight, the new shard's next
// message). A timer goroutine per send, as before, let Go's timers fire
// them in either order.
func (s *Server) emitStatusesLocked(shard int, msgs, failed []Message, arrival int64) {
	ts := time.Now().Unix()
	for _, m := range failed {
		s.emitLocked(shard, Event{Kind: KindStatus, MessageID: m.ID, Status: StatusFailed, Recipient: m.To, Timestamp: ts, Payload: unreachableDetails})
	}
	if len(msgs) == 0 {
		return
	}
	for k, st := range []string{StatusSent, StatusDelivered, StatusRead} {
		if s.cfg.StatusDelay <= 0 {
			for _, m := range msgs {
				s.emitLocked(shard, Event{Kind: KindStatus, MessageID: m.ID, Status: st, Recipient: m.To, Timestamp: ts})
			}
			continue
		}
		s.nextStatus++
		heap.Push(&s.statuses, statusDue{at: arrival + int64(k+1)*int64(s.cfg.StatusDelay), n: s.nextStatus, shard: shard, msgs: msgs, status: st})
	}
	if s.cfg.StatusDelay <= 0 {
		return
	}
	if !s.statusRunning {
		s.statusRunning = true
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.runStatuses() }()
	}
	select {
	case s.statusWake <- struct{}{}:
	default:
	}
}

// statusDue is one status of a send's messages, due at at (server ns).
type statusDue struct {
	at     int64
	n      uint64 // scheduling order, for equal times
	shard  int
	msgs   []Message
	status string
}

// statusHeap orders scheduled statuses by due time, then scheduling order.
type statusHeap []statusDue

func (h statusHeap) Len() int { return len(h) }
func (h statusHeap) Less(i, j int) bool {
	return h[i].at < h[j].at || (h[i].at == h[j].at && h[i].n < h[j].n)
}
func (h statusHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *statusHeap) Push(x any)   { *h = append(*h, x.(statusDue)) }
func (h *statusHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// runStatuses emits scheduled statuses as they fall due, until Close.
func (s *Server) runStatuses() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		now := s.now()
		for len(s.statuses) > 0 && s.statuses[0].at <= now {
			d := heap.Pop(&s.statuses).(statusDue)
			ts := time.Now().Unix()
			for _, m := range d.msgs {
				s.emitLocked(d.shard, Event{Kind: KindStatus, MessageID: m.ID, Status: d.status, Recipient: m.To, Timestamp: ts})
			}
		}
		wait := time.Hour
		if len(s.statuses) > 0 {
			wait = time.Duration(s.statuses[0].at - now)
		}
		s.mu.Unlock()
		t.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.statusWake:
		case <-t.C:
		}
	}
}

// maxUnacked bounds the events a shard keeps for a coreapp that never
// acknowledges; past it the oldest are dropped (and logged).
const maxUnacked = 1 << 20

// emitLocked numbers e, keeps it until acknowledged and pushes it to the
// open connection of its shard (see routeLocked), if any. It reports
// whether one was open.
func (s *Server) emitLocked(shard int, e Event) bool {
	shard = s.routeLocked(shard, e.Recipient)
	return s.appendLocked(shard, e)
}

// routeLocked is the shard an event about recipient goes to: its shard
// under the newest layout the coreapps told, so all of a recipient's
// events are in one shard's stream at any time, in the order they
// happened. Without a layout (or for a number with no digits), the shard
// the caller named: the sender's connection, or the one an inbound
// message was injected for.
func (s *Server) routeLocked(shard int, recipient string) int {
	if s.layout == 0 {
		return shard
	}
	if to, err := mcshard.For(recipient, s.layout); err == nil {
		return to
	}
	return shard
}

// learnLayoutLocked takes a layout a coreapp told, if it is newer than the
// one the network has. A changed count moves every event still held
// (unacknowledged, pushed or not) whose recipient now belongs to another
// shard to that shard's stream, in order, behind what it holds: the
// events of a removed shard reach the shard that now serves their
// recipients, and a recipient's older events stay ahead of its newer
// ones, which go to the new shard from now on. An event moved away from a
// connection that was already given it may still be stored by that
// coreapp: it is then delivered twice, the moved copy in order.
func (s *Server) learnLayoutLocked(shards int, version int64) {
	if !mcshard.ValidCount(shards) || version <= s.layoutVersion {
		return
	}
	old := s.layout
	s.layout, s.layoutVersion = shards, version
	if shards == old {
		return
	}
	ids := make([]int, 0, len(s.shards))
	for id := range s.shards {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	moves := map[int][]Event{}
	moved := 0
	for _, id := range ids {
		sh := s.shards[id]
		keep := sh.unacked[:0:0]
		for _, e := range sh.unacked {
			if e.Kind == KindMoved {
				if id < shards {
					keep = append(keep, e) // a place held already
				}
				continue
			}
			to := s.routeLocked(id, e.Recipient)
			if to == id {
				keep = append(keep, e)
				continue
			}
			moves[to] = append(moves[to], e)
			moved++
			if id < shards {
				// A shard that stays keeps the event's place: a
				// connection expects its shard's numbers without gaps
				// (a gap stops its acknowledgements).
				keep = append(keep, Event{Kind: KindMoved, MessageID: e.MessageID, Recipient: e.Recipient,
					Timestamp: e.Timestamp, Shard: e.Shard, Seq: e.Seq})
			}
		}
		// A removed shard's events all move; its stream is left empty.
		sh.unacked = keep
	}
	s.log.Info("shard count changed", "shards", shards, "map_version", version, "from", old, "events_moved", moved)
	for _, to := range ids {
		for _, e := range moves[to] {
			s.appendMovedLocked(to, e)
		}
		delete(moves, to)
	}
	for to, es := range moves { // shards the network had not seen yet
		for _, e := range es {
			s.appendMovedLocked(to, e)
		}
	}
}

// appendMovedLocked appends an event moved from another shard's stream and
// records the number it got there.
func (s *Server) appendMovedLocked(shard int, e Event) {
	s.appendLocked(shard, e)
	sh := s.shards[shard]
	sh.renumbered = append(sh.renumbered, sh.nextEvent)
	if over := len(sh.renumbered) - maxRenumbered; over > 0 {
		sh.renumbered = append([]uint64(nil), sh.renumbered[over:]...)
	}
}

// appendLocked numbers e in shard's stream, keeps it until acknowledged
// and pushes it to the shard's open connection, if any. It reports whether
// one was open.
func (s *Server) appendLocked(shard int, e Event) bool {
	sh := s.shard(shard)
	sh.nextEvent++
	e.Shard, e.Seq = shard, sh.nextEvent
	sh.unacked = append(sh.unacked, e)
	if over := len(sh.unacked) - maxUnacked; over > 0 {
		s.log.Warn("events never acknowledged; dropping the oldest", "shard", shard, "dropped", over)
		sh.unacked = append([]Event(nil), sh.unacked[over:]...)
	}
	if sh.open == nil {
		return false
	}
	s.pushLocked(sh)
	return true
}

// ackLocked drops the shard's events up to seq: the coreapp stored them.
// Only the shard's open connection may acknowledge.
func (s *Server) ackLocked(c *conn, f Frame) {
	if c.iv == nil || s.shards[c.shard].open != c {
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: "not connected"})
		return
	}
	sh := s.shards[c.shard]
	// Only what this connection was given can be acknowledged on it.
	upTo := min(f.AckSeq, sh.pushedTo)
	n := sort.Search(len(sh.unacked), func(i int) bool { return sh.unacked[i].Seq > upTo })
	sh.unacked = append(sh.unacked[:0:0], sh.unacked[n:]...)
	sh.acked = max(sh.acked, upTo)
	sh.acks++
	c.out.push(Frame{Op: OpAcked, Seq: f.Seq})
	s.pushLocked(sh) // the window moved
}

// checkLocked answers a contact check: a number is an account when it has
// 8 to 15 digits, does not start with 0 and was not made unreachable.
func (s *Server) checkLocked(c *conn, f Frame) {
	if c.iv == nil || s.shards[c.shard].open != c {
		c.out.push(Frame{Op: OpError, Seq: f.Seq, Reason: "not connected"})
		return
	}
	out := make([]ContactResult, len(f.Inputs))
	for i, in := range f.Inputs {
		d := string(digits(in))
		_, bad := s.unreachable[d]
		out[i] = ContactResult{Input: in, Status: ContactInvalid}
		if !bad && len(d) >= 8 && len(d) <= 15 && d[0] != '0' {
			out[i].Status, out[i].WAID = ContactValid, d
		}
	}
	c.out.push(Frame{Op: OpChecked, Seq: f.Seq, Contacts: out})
}

// digits returns the ASCII digits of a phone number as written.
func digits(s string) []byte {
	d := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			d = append(d, s[i])
		}
	}
	return d
}

// SetUnreachable makes number (any punctuation) not an account: contact
// checks call it invalid and messages to it get a failed status.
func (s *Server) SetUnreachable(number string) error {
	d := string(digits(number))
	if d == "" {
		return fmt.Errorf("%q has no digits", number)
	}
	s.mu.Lock()
	s.unreachable[d] = struct{}{}
	s.mu.Unlock()
	return nil
}

func eventFrame(e Event) Frame { return Frame{Op: OpEvent, Event: &e} }

// endLocked ends c at time at (server ns) for reason; final, if not nil,
// is written before the socket closes. Events it did not acknowledge stay
// with the shard for its next connection.
func (s *Server) endLocked(c *conn, reason string, at int64, final *Frame) {
	if c.ended {
		return
	}
	c.ended = true
	delete(s.conns, c)
	unsent := c.out.finish(final)
	_ = c.nc.SetReadDeadline(time.Now()) // wake the reader; it stops on c.ended
	if c.iv == nil {
		return
	}
	c.iv.End, c.iv.EndReason, c.iv.Open = s.unix(at), reason, false
	_ = unsent // events are kept in sh.unacked until acknowledged
	sh := s.shards[c.shard]
	if sh.open == c {
		sh.open, sh.pushedTo = nil, sh.acked
	}
	lvl := slog.LevelInfo
	if reason != EndClosed {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "connection ended", "conn", c.iv.ID, "shard", c.shard, "epoch", c.epoch,
		"node", c.iv.Node, "reason", reason, "duration", time.Duration(c.iv.End-c.iv.Start).String())
}

// Connections returns a copy of every interval, in connect order.
func (s *Server) Connections() []Interval {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Interval, len(s.intervals))
	for i, iv := range s.intervals {
		out[i] = *iv
	}
	return out
}

// Overlap is two intervals of one shard that were open at the same time.
type Overlap struct {
	Shard  int      `json:"shard"`
	First  Interval `json:"first"`
	Second Interval `json:"second"`
}

// Violations is every overlap the network saw.
type Violations struct {
	Count    int       `json:"count"`
	Overlaps []Overlap `json:"overlaps"`
}

// Violations computes the overlaps from the recorded intervals rather than
// counting events, so no code path can forget one.
func (s *Server) Violations() Violations { return FindOverlaps(s.Connections()) }

// FindOverlaps returns every pair of intervals of one shard that share a
// moment. An open interval extends forever; intervals are half-open
// [Start, End), so one ending exactly when the next starts is no overlap.
func FindOverlaps(ivs []Interval) Violations {
	end := func(iv Interval) int64 {
		if iv.Open {
			return 1<<63 - 1
		}
		return iv.End
	}
	sorted := append([]Interval(nil), ivs...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Shard != sorted[j].Shard {
			return sorted[i].Shard < sorted[j].Shard
		}
		return sorted[i].Start < sorted[j].Start
	})
	v := Violations{Overlaps: []Overlap{}}
	for i, a := range sorted {
		for _, b := range sorted[i+1:] {
			if b.Shard != a.Shard {
				break
			}
			if a.Start < end(b) && b.Start < end(a) {
				v.Overlaps = append(v.Overlaps, Overlap{Shard: a.Shard, First: a, Second: b})
			}
		}
	}
	v.Count = len(v.Overlaps)
	return v
}

// ShardState is the network's view of one shard.
type ShardState struct {
	Shard         int       `json:"shard"`
	NewestEpoch   uint64    `json:"newest_epoch"`
	Open          *Interval `json:"open"`           // nil when no connection is open
	PendingEvents int       `json:"pending_events"` // not yet pushed to a connection
	UnackedEvents int       `json:"unacked_events"` // pushed or not, not yet acknowledged
	Messages      int       `json:"messages"`
	// Renumbered are the event numbers of this shard's stream that went to
	// events moved in from another shard when the shard count changed:
	// they do not tell the order the network emitted those events in.
	Renumbered []uint64 `json:"renumbered,omitempty"`
	// Events pushed and acks taken since the network started.
	PushedEvents int `json:"pushed_events"`
	Acks         int `json:"acks"`
}

// Shards returns every shard the network has seen, by shard number.
func (s *Server) Shards() []ShardState {
	s.mu.Lock()
	defer s.mu.Unlock()
	counts := map[int]int{}
	for _, r := range s.received {
		counts[r.Shard]++
	}
	out := make([]ShardState, 0, len(s.shards))
	for n, sh := range s.shards {
		pending := 0
		for _, e := range sh.unacked {
			if sh.open == nil || e.Seq > sh.pushedTo {
				pending++
			}
		}
		st := ShardState{Shard: n, NewestEpoch: sh.newest, PendingEvents: pending, UnackedEvents: len(sh.unacked), Messages: counts[n],
			Renumbered: append([]uint64(nil), sh.renumbered...), PushedEvents: sh.pushed, Acks: sh.acks}
		if sh.open != nil {
			iv := *sh.open.iv
			st.Open = &iv
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shard < out[j].Shard })
	return out
}

// MessageCount is how many messages the network has accepted so far: a
// cheap progress counter for a benchmark sampling delivery every second,
// where listing every message would itself be the load.
func (s *Server) MessageCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.received)
}

// DuplicateCount is how many times a message the network already had was
// sent to it again (answered "duplicate", not received twice).
func (s *Server) DuplicateCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// MessageFilter selects received messages; zero values match everything.
type MessageFilter struct {
	Shard *int
	To    string
}

// Messages returns the accepted messages matching f, in arrival order.
func (s *Server) Messages(f MessageFilter) []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Received{}
	for _, r := range s.received {
		if (f.Shard == nil || r.Shard == *f.Shard) && (f.To == "" || r.To == f.To) {
			out = append(out, r)
		}
	}
	return out
}

// Inbound is a message from a contact to the coreapp, injected through the
// API.
type Inbound struct {
	Shard     int             `json:"shard"`
	ID        string          `json:"id,omitempty"` // generated when empty
	Recipient string          `json:"recipient"`    // the contact who wrote
	Payload   json.RawMessage `json:"payload,omitempty"`
}

// Layout is the shard count the network routes events by and the shard map
// version it was told at (0, 0 until a coreapp told one).
func (s *Server) Layout() (shards int, version int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.layout, s.layoutVersion
}

// Inject pushes in to its shard's connection as an inbound event, or keeps
// it until the shard connects. Its shard is the recipient's under the
// layout the network was told (see routeLocked), else in.Shard. It
// returns the event's message ID and whether a connection was open.
func (s *Server) Inject(in Inbound) (id string, delivered bool, err error) {
	if in.Shard < 0 {
		return "", false, fmt.Errorf("invalid shard %d", in.Shard)
	}
	if len(in.Payload) > 0 && !json.Valid(in.Payload) {
		return "", false, errors.New("payload is not valid JSON")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.ID == "" {
		s.nextIn++
		in.ID = fmt.Sprintf("in-%d", s.nextIn)
	}
	s.rest.noteInbound(in.ID, in.Recipient)
	delivered = s.emitLocked(in.Shard, Event{
		Kind: KindInbound, MessageID: in.ID, Recipient: in.Recipient, Timestamp: time.Now().Unix(), Payload: in.Payload,
	})
	return in.ID, delivered, nil
}
