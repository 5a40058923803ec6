package simnet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// clientWriteTimeout bounds a write when no deadline limits it further.
const clientWriteTimeout = 5 * time.Second

// RefusedError is the network's refusal of a connect.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "refused by the network: " + e.Reason }

// Unwrap makes a refusal match transport.ErrRefused.
func (e *RefusedError) Unwrap() error { return transport.ErrRefused }

// ClosedError says the network ended the connection, and why.
type ClosedError struct{ Reason string }

func (e *ClosedError) Error() string { return "closed by the network: " + e.Reason }

// Conn is a client connection to the network: the plugin's side of the
// wire protocol. It is safe for concurrent use.
type Conn struct {
	nc      net.Conn
	onEvent func(Event)

	// writeBefore, when not 0, is a MonoNow deadline: no byte is written
	// at or after it (see SetWriteBefore).
	writeBefore atomic.Int64
	wmu         sync.Mutex
	seq         atomic.Uint64
	// lastRead is the MonoNow time of the last frame read from the network
	// (the dial time before the first), so a silent network is noticed.
	lastRead atomic.Int64

	mu      sync.Mutex
	waiters map[uint64]chan Frame
	err     error // why the connection ended; set once done is closed
	done    chan struct{}
}

// Dial connects to the network at addr. onEvent, if not nil, is called
// from the connection's reader for every pushed event, in order; it must
// not block.
func Dial(ctx context.Context, addr string, onEvent func(Event)) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial network %s: %w", addr, err)
	}
	c := &Conn{nc: nc, onEvent: onEvent, waiters: map[uint64]chan Frame{}, done: make(chan struct{})}
	c.lastRead.Store(transport.MonoNow())
	go c.read()
	return c, nil
}

// SetWriteBefore forbids writes at or after the MonoNow time t (0 lifts the
// limit). A write that would start later fails with
// transport.ErrDeadlinePassed, and one in progress is cut off at t by the
// socket's write deadline, so not even a slow write crosses t.
func (c *Conn) SetWriteBefore(t int64) { c.writeBefore.Store(t) }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it is alive.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// write sends one frame, honouring the write limit. A failed write leaves
// the stream in an unknown state, so it ends the connection.
func (c *Conn) write(f Frame) error {
	b, err := marshalFrame(f)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	wd := time.Now().Add(clientWriteTimeout)
	if lim := c.writeBefore.Load(); lim != 0 {
		left := transport.Until(lim)
		if left <= 0 {
			return fmt.Errorf("write %s: %w", f.Op, transport.ErrDeadlinePassed)
		}
		// time.Now's monotonic reading and MonoNow are the same clock
		// on Linux, so this deadline falls at lim.
		if d := time.Now().Add(left); d.Before(wd) {
			wd = d
		}
	}
	if err := c.nc.SetWriteDeadline(wd); err != nil {
		c.fail(err)
		return fmt.Errorf("write %s: %w", f.Op, err)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.fail(err)
		return fmt.Errorf("write %s: %w", f.Op, err)
	}
	return nil
}

// request sends f with a fresh sequence number and waits for the reply.
func (c *Conn) request(ctx context.Context, f Frame) (Frame, error) {
	f.Seq = c.seq.Add(1)
	ch := make(chan Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return Frame{}, fmt.Errorf("%s: %w", f.Op, err)
	}
	c.waiters[f.Seq] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, f.Seq)
		c.mu.Unlock()
	}()
	if err := c.write(f); err != nil {
		return Frame{}, err
	}
	var r Frame
	select {
	case r = <-ch:
	case <-c.done:
		// The reader hands over a reply before it ends the connection,
		// so a reply that came just before the close is already here.
		select {
		case r = <-ch:
		default:
			return Frame{}, fmt.Errorf("%s: %w", f.Op, c.Err())
		}
	case <-ctx.Done():
		return Frame{}, fmt.Errorf("%s: %w", f.Op, ctx.Err())
	}
	if r.Op == OpError {
		return r, fmt.Errorf("%s: network error: %s", f.Op, r.Reason)
	}
	return r, nil
}

// Hello asks the network for its keepalive timeout.
func (c *Conn) Hello(ctx context.Context) (time.Duration, error) {
	r, err := c.request(ctx, Frame{Op: OpHello})
	if err != nil {
		return 0, err
	}
	if r.KeepaliveMS <= 0 {
		return 0, fmt.Errorf("hello: network reported keepalive %dms", r.KeepaliveMS)
	}
	return time.Duration(r.KeepaliveMS) * time.Millisecond, nil
}

// Connect attaches this connection to shard at epoch for node. A refusal
// is a *RefusedError.
func (c *Conn) Connect(ctx context.Context, shard int, epoch uint64, node string) (connID int64, err error) {
	return c.ConnectLayout(ctx, shard, epoch, node, transport.Layout{})
}

// ConnectLayout is Connect telling the network the cluster's shard count
// too (see transport.Layout).
func (c *Conn) ConnectLayout(ctx context.Context, shard int, epoch uint64, node string, l transport.Layout) (connID int64, err error) {
	r, err := c.request(ctx, Frame{Op: OpConnect, Shard: shard, Epoch: epoch, Node: node, Shards: l.Shards, MapVersion: l.Version})
	if err != nil {
		return 0, err
	}
	switch r.Op {
	case OpConnected:
		return r.ConnID, nil
	case OpRefused:
		return 0, &RefusedError{Reason: r.Reason}
	}
	return 0, fmt.Errorf("connect: unexpected reply %q", r.Op)
}

// Ping tells the network the connection is alive; it does not wait for
// the pong.
func (c *Conn) Ping() error { return c.PingLayout(transport.Layout{}) }

// PingLayout is Ping telling the network the cluster's shard count too.
func (c *Conn) PingLayout(l transport.Layout) error {
	return c.write(Frame{Op: OpPing, Seq: c.seq.Add(1), Shards: l.Shards, MapVersion: l.Version})
}

// Silence is how long the network has sent nothing on this connection.
// Every ping is answered, so a silence well past the keepalive means the
// path is cut: the network has dropped the connection by then.
func (c *Conn) Silence() time.Duration { return time.Duration(transport.MonoNow() - c.lastRead.Load()) }

// Send delivers msgs and returns the network's per-message results.
func (c *Conn) Send(ctx context.Context, msgs []Message) ([]Result, error) {
	r, err := c.request(ctx, Frame{Op: OpSend, Msgs: msgs})
	if err != nil {
		return nil, err
	}
	if r.Op != OpSent || len(r.Results) != len(msgs) {
		return nil, fmt.Errorf("send: unexpected reply %q with %d results for %d messages", r.Op, len(r.Results), len(msgs))
	}
	return r.Results, nil
}

// Ack tells the network that the shard's events up to seq are stored.
func (c *Conn) Ack(ctx context.Context, seq uint64) error {
	r, err := c.request(ctx, Frame{Op: OpAck, AckSeq: seq})
	if err != nil {
		return err
	}
	if r.Op != OpAcked {
		return fmt.Errorf("ack: unexpected reply %q", r.Op)
	}
	return nil
}

// Check asks which inputs are accounts; results are in input order.
func (c *Conn) Check(ctx context.Context, inputs []string) ([]ContactResult, error) {
	r, err := c.request(ctx, Frame{Op: OpCheck, Inputs: inputs})
	if err != nil {
		return nil, err
	}
	if r.Op != OpChecked || len(r.Contacts) != len(inputs) {
		return nil, fmt.Errorf("check: unexpected reply %q with %d results for %d inputs", r.Op, len(r.Contacts), len(inputs))
	}
	return r.Contacts, nil
}

// RejectedError is the network's refusal of a registration request. It
// matches the transport error its Kind stands for (ErrBadCert, ErrBadCode,
// ErrNoCode).
type RejectedError struct {
	Kind   string // one of the Reject* constants
	Reason string
}

func (e *RejectedError) Error() string { return "rejected by the network: " + e.Reason }

// Unwrap maps the rejection to its transport error.
func (e *RejectedError) Unwrap() error {
	switch e.Kind {
	case RejectBadCert:
		return transport.ErrBadCert
	case RejectBadCode:
		return transport.ErrBadCode
	case RejectNoCode:
		return transport.ErrNoCode
	}
	return nil
}

// Register asks the network to send a registration code for r's number.
// It returns the name the certificate carries and whether the number was
// already verified for it (then no code was sent). It needs no connect.
func (c *Conn) Register(ctx context.Context, r RegistrationFrame) (vname string, registered bool, err error) {
	f, err := c.request(ctx, Frame{Op: OpRegister, Reg: &r})
	if err != nil {
		return "", false, err
	}
	switch f.Op {
	case OpCodeSent:
		return f.VName, f.Registered, nil
	case OpRejected:
		return "", false, &RejectedError{Kind: f.Error, Reason: f.Reason}
	}
	return "", false, fmt.Errorf("register: unexpected reply %q", f.Op)
}

// Verify checks r.Code against the code the network issued for r's
// number. It needs no connect.
func (c *Conn) Verify(ctx context.Context, r RegistrationFrame) error {
	f, err := c.request(ctx, Frame{Op: OpVerify, Reg: &r})
	if err != nil {
		return err
	}
	switch f.Op {
	case OpVerified:
		return nil
	case OpRejected:
		return &RejectedError{Kind: f.Error, Reason: f.Reason}
	}
	return fmt.Errorf("verify: unexpected reply %q", f.Op)
}

// Close ends the connection politely: it sends close and waits until the
// network confirms (or ctx ends), then closes the socket. When the write
// limit has passed it only closes the socket, which is all that is left
// to do. Either way nothing more is written once it returns.
func (c *Conn) Close(ctx context.Context) error {
	_, err := c.request(ctx, Frame{Op: OpClose})
	c.Abort()
	if err != nil && !errors.Is(err, transport.ErrDeadlinePassed) {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// Abort closes the socket without a word to the network.
func (c *Conn) Abort() {
	c.fail(errors.New("closed locally"))
}

// fail ends the connection with err unless it already ended.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	c.mu.Unlock()
	_ = c.nc.Close() // the first error is the one that matters
}

// read dispatches frames from the network until the connection ends.
func (c *Conn) read() {
	sc := bufio.NewScanner(c.nc)
	sc.Buffer(make([]byte, 0, 64<<10), maxFrame)
	sc.Split(splitFrames)
	var closed *ClosedError
	for sc.Scan() {
		c.lastRead.Store(transport.MonoNow())
		var f Frame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			c.fail(fmt.Errorf("malformed frame from the network: %w", err))
			return
		}
		switch {
		case f.Op == OpEvent:
			if f.Event != nil && c.onEvent != nil {
				c.onEvent(*f.Event)
			}
			continue
		case f.Op == OpClosed && f.Seq == 0:
			closed = &ClosedError{Reason: f.Reason}
			continue
		}
		c.mu.Lock()
		ch := c.waiters[f.Seq]
		c.mu.Unlock()
		if ch != nil {
			ch <- f // buffered, and each seq is answered once
		}
	}
	switch err := sc.Err(); {
	case closed != nil:
		c.fail(closed)
	case err != nil:
		c.fail(fmt.Errorf("read: %w", err))
	default:
		c.fail(errors.New("connection closed by the network"))
	}
}
