// Package claim is the coreapp's hold on its shard: the holder takes the
// shard the primary master assigns (a row of shard_map), renews the claim on
// the database's clock from a reserved connection pool, connects the
// transport plugin only while the claim is valid and steps down the moment
// it cannot prove it. Every other stage asks it one question, Status (am I
// primary, of which shard, under which epoch), and fences its own writes in
// the database; the api stage hands it the masters' promotions, releases and
// nudges (requests.go), and the events stage asks it to reconnect when its
// ack cursor stopped on a connection that stays up (Redeliver).
//
// It depends on Deps: the node's identity, the claim's own *sql.DB, the
// settings, the plugin supervisor, its metrics, and Wake, which it calls
// when its status changes so the outbox and webhook stages look again.
package claim

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/lease"
	"github.com/multiconnect/multiconnect/internal/monotime"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// claim is this coreapp's hold on one shard.
type claim struct {
	shard     int
	epoch     int64
	valid     lease.Validity
	connectAt int64  // monotime before which the network must not see us
	connected bool   // the plugin holds the connection
	offAt     int64  // monotime it last lost the connection (connectAt counts before the first)
	pluginGen uint64 // plugin generation the connection was made on
	// extendedAt is the monotime the plugin last took (or was too slow to
	// refuse) an extension: it has just been heard from.
	extendedAt int64
	// connectedAt is the monotime of the plugin's last successful Connect.
	connectedAt int64
	// passed is the layout the plugin last took with an Extend, so that a
	// settings change that left the shard count alone sends it nothing.
	passed transport.Layout
}

type assignment struct {
	shard int
	epoch int64
}

// Holder owns the shard claim. One goroutine (run) makes every decision;
// the API only sends it assignments and reads a snapshot.
//
// Rules, each enforced right before the action it guards:
//   - renew every min(heartbeat_interval, unhealthy_interval/4), counting
//     validity from the moment the renewal was sent;
//   - never connect before connect_after (as told by the database, measured
//     from when its answer was received) nor after validity lapses;
//   - the plugin gets the validity as an absolute deadline and disconnects
//     itself at it, so even a frozen coreapp's connection ends on time;
//   - a renewal the database refuses, or no renewal in time, means step down.
type Holder struct {
	Deps
	assign  chan assignment
	nudge   chan struct{}
	release chan releaseReq
	mu      sync.Mutex
	cur     *claim
	// dbOK is the monotime of the holder's last database statement that
	// succeeded (0: none yet). Heartbeats report its age: the master
	// promotes only a coreapp that reached MySQL recently.
	dbOK atomic.Int64
	// Renewals are sent by their own goroutine (renewLoop), on a fixed
	// cadence, up to one in flight per reserved connection: neither a slow
	// round trip nor run's calls to the plugin hold back the next one.
	// Their outcomes come back to run on renewals.
	renewals chan renewal
	pending  atomic.Int32
	inflight sync.WaitGroup
	renewRTT prometheus.Histogram
	renewGap prometheus.Histogram
	// rewind carries the callback writer's requests for a new connection
	// (see reconnect).
	rewind chan int
}

// renewal is the outcome of one background claim renewal of c.
type renewal struct {
	c    *claim
	lost bool
	err  error
}

// releaseReq is the master's request to give up a claim whose holder is
// not connected to the network; done gets whether the claim was handed
// back (expired in the database), not only dropped.
type releaseReq struct {
	shard int
	epoch int64
	done  chan bool
}

// New makes the holder; Run starts it.
func New(d Deps) *Holder {
	h := &Holder{Deps: d, assign: make(chan assignment, 8), nudge: make(chan struct{}, 1), release: make(chan releaseReq),
		rewind:   make(chan int, 1),
		renewals: make(chan renewal, 16),
		renewRTT: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_coreapp_claim_renewal_seconds",
			Help: "Round trip of one claim renewal (UPDATE shard_claims).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		renewGap: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_coreapp_claim_renewal_gap_seconds",
			Help:    "Time between the sending of two consecutive claim renewals: the claim's validity must outlast it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	d.Metrics.Registry.MustRegister(h.renewRTT, h.renewGap)
	return h
}

// Status is the snapshot heartbeats and health report, and what every
// stage reads to know whether (and for which shard) it may work.
type Status struct {
	Primary   bool
	Shard     int
	Epoch     int64
	Connected bool
	// ConnectDue: connect_after has passed, so the holder should be
	// connected; until then not being connected is expected.
	ConnectDue bool
	// ConnectedAt: the monotime the plugin last connected (if Connected).
	ConnectedAt int64
	// Off: how long it has been due and not connected (0 when connected).
	// The master replaces a holder off for unhealthy_interval; it counts
	// on this, not on when it first heard it off, so a connection lost,
	// made again and lost again between two heartbeats counts from the
	// last loss.
	Off time.Duration
}

// Status is the claim as of now.
func (h *Holder) Status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur == nil || !h.cur.valid.Valid() {
		return Status{Shard: -1}
	}
	now := monotime.Now()
	st := Status{Primary: true, Shard: h.cur.shard, Epoch: h.cur.epoch, Connected: h.cur.connected,
		ConnectDue: now >= h.cur.connectAt, ConnectedAt: h.cur.connectedAt}
	if st.ConnectDue && !st.Connected {
		st.Off = time.Duration(now - max(h.cur.offAt, h.cur.connectAt))
	}
	return st
}

// DBAgeMS is how many milliseconds ago the holder's last database
// statement succeeded, or -1 if none has.
func (h *Holder) DBAgeMS() int64 {
	t := h.dbOK.Load()
	if t == 0 {
		return -1
	}
	return time.Duration(monotime.Now() - t).Milliseconds()
}

func (h *Holder) reachedDB() { h.dbOK.Store(monotime.Now()) }

func (h *Holder) renewEvery() time.Duration {
	s := h.Settings.Get()
	every := s.Heartbeat()
	if q := s.Unhealthy() / 4; q < every {
		every = q
	}
	return every
}

// Run makes every decision of the holder until ctx ends; it steps down
// before it returns.
func (h *Holder) Run(ctx context.Context) {
	go h.renewLoop(ctx)
	// The tick is due at a fixed time, not a period after the last event:
	// renewal outcomes arrive about every period too, and a timer started
	// afresh at each of them fired only when an outcome came late, so a
	// holder that had lost its connection waited for a reconnection
	// attempt as long as its renewals kept coming on time.
	nextTick := monotime.Now() + int64(h.renewEvery())
	for {
		changed := h.Settings.Moved()
		wait := time.Duration(nextTick - monotime.Now())
		h.mu.Lock()
		cur := h.cur
		h.mu.Unlock()
		if cur != nil {
			if r := cur.valid.Remaining(); r < wait {
				wait = r
			}
			if !cur.connected {
				if d := time.Duration(cur.connectAt - monotime.Now()); d > 0 && d < wait {
					wait = d
				}
			}
		}
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		select {
		case <-ctx.Done():
			h.shutdown()
			return
		case a := <-h.assign:
			h.take(ctx, a)
		case <-h.nudge:
			h.tick(ctx)
			nextTick = monotime.Now() + int64(h.renewEvery())
		case r := <-h.release:
			r.done <- h.giveUp(r)
		case shard := <-h.rewind:
			h.reconnect(ctx, shard)
		case r := <-h.renewals:
			h.renewed(ctx, r)
		case <-changed:
			h.tick(ctx)
			nextTick = monotime.Now() + int64(h.renewEvery())
			h.passLayout(ctx)
		case <-time.After(wait):
			h.tick(ctx)
			nextTick = monotime.Now() + int64(h.renewEvery())
		}
	}
}

// tick steps down when the claim is gone, connects when allowed, and
// looks for an assignment when not holding. Renewals are renewLoop's.
func (h *Holder) tick(ctx context.Context) {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur == nil {
		h.discover(ctx)
		return
	}
	if !cur.valid.Valid() {
		h.stepDown("claim could not be renewed in time")
		return
	}
	h.ensureConnected(ctx, cur, monotime.Now()-cur.extendedAt < int64(2*h.renewEvery()))
}

// renewLoop sends the current claim's renewals every renewEvery, counted
// from the last one sent (the claim's validity is counted from there), so
// the time run spends on the plugin (extend, health, connect) is never
// added to the gap between two renewals.
func (h *Holder) renewLoop(ctx context.Context) {
	var last *claim
	var lastSent, due int64
	for ctx.Err() == nil {
		every := h.renewEvery()
		h.mu.Lock()
		cur := h.cur
		h.mu.Unlock()
		now := monotime.Now()
		switch {
		case cur == nil:
			due = now + int64(every)
		case cur != last:
			// Taken just now (the take extended it): the first renewal
			// is due one period later.
			last, lastSent, due = cur, now, now+int64(every)
		case now >= due && h.pending.Load() >= database.CoreappClaimPool:
			due = now + int64(every/4) // both connections busy: look again soon
		case now >= due:
			gap := time.Duration(now - lastSent)
			if h.startRenewal(ctx, cur, gap) {
				h.renewGap.Observe(gap.Seconds())
				lastSent, due = now, now+int64(every)
			} else {
				due = now + int64(every)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(max(due-monotime.Now(), int64(time.Millisecond)))):
		}
	}
}

// startRenewal sends a renewal of c in the background if c is still the
// current claim; its outcome comes back to run.
func (h *Holder) startRenewal(ctx context.Context, c *claim, gap time.Duration) bool {
	h.mu.Lock()
	if h.cur != c || !c.valid.Valid() {
		h.mu.Unlock()
		return false
	}
	// Under the lock: once stepDown has cleared cur, no renewal of the old
	// claim starts, so handBack's wait covers all of them.
	h.inflight.Add(1)
	h.mu.Unlock()
	h.pending.Add(1)
	go func() {
		defer h.inflight.Done()
		lost, err := h.renew(ctx, c, gap)
		h.pending.Add(-1)
		select {
		case h.renewals <- renewal{c: c, lost: lost, err: err}:
		case <-ctx.Done():
		}
	}()
	return true
}

// renewed acts on a background renewal's outcome: step down when the
// database refused it, extend the plugin's deadline when it succeeded.
func (h *Holder) renewed(ctx context.Context, r renewal) {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if r.c != cur {
		return // a claim given up since
	}
	switch {
	case r.lost:
		h.stepDown("claim taken over or lapsed in the database")
	case r.err != nil:
		h.DBError("renew claim", r.err)
		if !cur.valid.Valid() {
			h.stepDown("claim could not be renewed in time")
		}
	default:
		was := cur.connected
		h.extend(ctx, cur)
		if was && !cur.connected {
			// The plugin has just lost the connection (the extend said
			// so): reconnect now, not at the next tick. Only on the loss:
			// retries after a failed attempt stay on the tick's cadence,
			// so run is free between them for the master's release
			// request (a connect into a cut path takes unhealthy/2).
			h.ensureConnected(ctx, cur, false)
		}
	}
}

// pluginBudget bounds a call to the plugin that only confirms what holds
// (extend, health): it may use what the claim has left beyond half of
// unhealthy_interval, and at least one renewal period, so run is soon back
// to act on renewals. A starved plugin then costs a retry, never the claim.
func (h *Holder) pluginBudget(c *claim, most time.Duration) time.Duration {
	unhealthy := h.Settings.Get().Unhealthy()
	b := max(h.renewEvery(), c.valid.Remaining()-unhealthy/2)
	return min(b, most)
}

// discover asks the database whether the master assigned us a shard (the
// promote call is only a shortcut; this poll makes a lost call harmless).
func (h *Holder) discover(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var a assignment
	err := h.DB.QueryRowContext(qctx, `SELECT shard_id, epoch FROM shard_claims
		WHERE node_id = ? AND incarnation = ? AND lease_expires > NOW(6) ORDER BY epoch DESC LIMIT 1`,
		h.ID.ID, h.ID.Incarnation).Scan(&a.shard, &a.epoch)
	if errors.Is(err, sql.ErrNoRows) {
		h.reachedDB()
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			h.DBError("discover assignment", err)
		}
		return
	}
	h.reachedDB()
	h.take(ctx, a)
}

// take claims an assigned shard: verify the assignment is ours and alive,
// extend it, and learn how long to wait before connecting, in one transaction.
func (h *Holder) take(ctx context.Context, a assignment) {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur != nil {
		if cur.shard == a.shard && cur.epoch == a.epoch {
			return // already ours
		}
		if cur.valid.Valid() {
			h.Log.Warn("ignoring assignment while holding another shard", "holding", cur.shard, "offered", a.shard)
			return
		}
		h.stepDown("claim lapsed")
	}
	unhealthy := h.Settings.Get().Unhealthy()
	qctx, cancel := context.WithTimeout(ctx, unhealthy/2)
	defer cancel()
	sent := monotime.Now()
	waitUS, err := h.claimTx(qctx, a, unhealthy)
	received := monotime.Now()
	if err != nil {
		h.Log.Warn("could not take assigned shard", "shard", a.shard, "epoch", a.epoch, "err", err)
		return
	}
	h.reachedDB()
	c := &claim{shard: a.shard, epoch: a.epoch, connectAt: received + waitUS*1000}
	c.valid.Renewed(sent, unhealthy)
	h.mu.Lock()
	h.cur = c
	h.mu.Unlock()
	h.Metrics.Primary.Set(1)
	h.Metrics.Shard.Set(float64(a.shard))
	h.Log.Info("became primary coreapp", "shard", a.shard, "epoch", a.epoch, "connect_in", time.Duration(waitUS)*time.Microsecond)
	h.ensureConnected(ctx, c, false)
}

var errNotOurs = errors.New("assignment is not ours or has lapsed")

func (h *Holder) claimTx(ctx context.Context, a assignment, ttl time.Duration) (waitUS int64, err error) {
	tx, err := h.DB.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var node string
	var inc, epoch int64
	var alive bool
	// The claim row only: the shard_map row is share-locked by every
	// group commit in flight (its fence), and its claim columns are
	// written, in one transaction with these, only by a master's promotion
	// or release, which locks this row too.
	err = tx.QueryRowContext(ctx, `SELECT COALESCE(node_id, ''), incarnation, epoch, lease_expires > NOW(6)
		FROM shard_claims WHERE shard_id = ? FOR UPDATE`, a.shard).Scan(&node, &inc, &epoch, &alive)
	if err != nil {
		return 0, fmt.Errorf("read shard %d: %w", a.shard, err)
	}
	if node != h.ID.ID || inc != h.ID.Incarnation || epoch != a.epoch || !alive {
		return 0, errNotOurs
	}
	// A plain (consistent, lock-free) read: its snapshot is taken now,
	// after the lock above, so it sees the promotion that assigned this
	// epoch; a later one waits for this transaction's lock on the claim.
	if err := tx.QueryRowContext(ctx, `SELECT GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), connect_after))
		FROM shard_map WHERE shard_id = ?`, a.shard).Scan(&waitUS); err != nil {
		return 0, fmt.Errorf("read shard %d's connect_after: %w", a.shard, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE shard_claims SET lease_expires = GREATEST(lease_expires, NOW(6) + INTERVAL ? MICROSECOND),
		renewed_at = NOW(6) WHERE shard_id = ?`, ttl.Microseconds(), a.shard); err != nil {
		return 0, fmt.Errorf("extend shard %d: %w", a.shard, err)
	}
	return waitUS, tx.Commit()
}

// renew extends the claim in the database; it runs in the background,
// beside other renewals, and touches only what is safe to share (the
// validity only moves forward). lost is true only when the database
// refused it. gap is the time since the previous renewal was sent.
func (h *Holder) renew(ctx context.Context, c *claim, gap time.Duration) (lost bool, err error) {
	unhealthy := h.Settings.Get().Unhealthy()
	qctx, cancel := context.WithTimeout(ctx, c.valid.Remaining())
	defer cancel()
	sent := monotime.Now()
	defer func() {
		rtt := time.Duration(monotime.Now() - sent)
		h.renewRTT.Observe(rtt.Seconds())
		// A renewal is due every unhealthy/4 at most: one that left less
		// than half the claim is worth a line, with where the time went.
		if gap+rtt > unhealthy/2 {
			h.Log.Warn("slow claim renewal", "shard", c.shard, "since_previous", gap, "round_trip", rtt,
				"remaining", c.valid.Remaining(), "err", err)
		}
	}()
	// shard_claims, not shard_map: the group commits' fences share-lock
	// the shard_map row until their COMMIT, and a renewal there queued
	// behind every one in flight (TestRenewalDoesNotWaitForFences).
	res, err := h.DB.ExecContext(qctx, `UPDATE shard_claims
		SET lease_expires = GREATEST(lease_expires, NOW(6) + INTERVAL ? MICROSECOND), renewed_at = NOW(6)
		WHERE shard_id = ? AND node_id = ? AND incarnation = ? AND epoch = ? AND lease_expires > NOW(6)`,
		unhealthy.Microseconds(), c.shard, h.ID.ID, h.ID.Incarnation, c.epoch)
	if err != nil {
		return false, err
	}
	h.reachedDB()
	if n, _ := res.RowsAffected(); n != 1 {
		return true, nil
	}
	c.valid.Renewed(sent, unhealthy)
	return false, nil
}

// extend hands the plugin the claim's new end (run's goroutine).
func (h *Holder) extend(ctx context.Context, c *claim) {
	if !c.connected {
		return
	}
	h.Plugins.With(func(t transport.Transport, gen uint64) {
		if gen != c.pluginGen {
			return
		}
		ectx, cancel := context.WithTimeout(ctx, h.pluginBudget(c, time.Second))
		defer cancel()
		l := h.layout()
		err := t.Extend(ectx, uint64(c.epoch), c.valid.Until(), l)
		switch {
		case ectx.Err() != nil && ctx.Err() == nil:
			// The plugin is slow, not refusing: it still closes the
			// connection at the deadline it holds, and the next
			// renewal extends again. Reconnecting would only churn.
			h.Log.Warn("transport slow to extend the connection; extending again at the next renewal", "err", err)
			c.extendedAt = monotime.Now()
		case err != nil:
			h.Log.Warn("transport refused to extend the connection; reconnecting", "err", err)
			h.setConnected(c, false, 0)
		default:
			c.extendedAt, c.passed = monotime.Now(), l
		}
	})
}

// passLayout tells the plugin the shard count now, after a change of
// settings or of the count, rather than at the next renewal's Extend
// (heartbeat_interval later, 5 s by default): a re-shard moves the
// network's unacknowledged events and the Cloud API's stored inbound rows
// between shards, and the plugin of a shard that received some reads them
// when it learns the new count. The deadline it passes is the one the last
// renewal gave, so it prolongs nothing. A change that left the layout as
// the plugin last took it (most settings changes) sends nothing.
func (h *Holder) passLayout(ctx context.Context) {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur != nil && cur.valid.Valid() && cur.passed != h.layout() {
		h.extend(ctx, cur)
	}
}

// ensureConnected connects the plugin once allowed, and reconnects after a
// plugin restart or a dropped connection. extended: the plugin has just
// confirmed the connection (a successful Extend), so asking it again is
// only another round trip to a process that may be short of CPU.
func (h *Holder) ensureConnected(ctx context.Context, c *claim, extended bool) {
	if monotime.Now() < c.connectAt {
		return
	}
	h.Plugins.With(func(t transport.Transport, gen uint64) {
		if extended && c.connected && gen == c.pluginGen {
			return
		}
		if c.connected && gen == c.pluginGen {
			hctx, cancel := context.WithTimeout(ctx, h.pluginBudget(c, time.Second))
			hl, err := t.Health(hctx)
			cancel()
			if err == nil && hl.Connected && hl.Epoch == uint64(c.epoch) {
				return
			}
			h.Log.Warn("transport connection lost; reconnecting", "shard", c.shard, "epoch", c.epoch, "err", err, "last_error", hl.LastError)
			if err == nil {
				// The plugin says the connection is gone: off since now,
				// whatever the attempt below does. A plugin too slow to
				// answer is not known to be off (see pluginBudget): it
				// counts as off only once the connect below fails.
				h.setConnected(c, false, 0)
			}
		}
		// The last check before the network sees us: validity is read here,
		// after any pause, and passed on as the plugin's own deadline.
		deadline := c.valid.Until()
		if deadline == 0 || monotime.Now() >= deadline {
			return
		}
		// A network that swallows packets makes a connect hang; bound the
		// attempt so a master's release is not held up behind it (renewals
		// have their own goroutine). The next tick tries again.
		wait := min(time.Duration(deadline-monotime.Now()), h.Settings.Get().Unhealthy()/2)
		cctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		l := h.layout()
		err := t.Connect(cctx, transport.ConnectRequest{Shard: c.shard, Epoch: uint64(c.epoch), Node: h.ID.ID, Deadline: deadline,
			Layout: l})
		if err != nil {
			h.Log.Warn("transport connect failed", "shard", c.shard, "epoch", c.epoch, "err", err)
			h.setConnected(c, false, 0)
			return
		}
		h.setConnected(c, true, gen)
		c.passed = l
		h.Metrics.Connects.Inc()
		h.Log.Info("connected to the network", "shard", c.shard, "epoch", c.epoch)
	})
}

// Redeliver asks run to reconnect shard (see reconnect): the callback
// writer's ack cursor stopped on the connection; a request already waiting
// covers this one.
func (h *Holder) Redeliver(shard int) {
	select {
	case h.rewind <- shard:
	default:
	}
}

// reconnect ends the plugin's connection for shard and connects again at
// the claim's epoch, for the callback writer: its ack cursor stopped on
// that connection (an event it could not store while the claim had
// lapsed), and it holds back every later event of the connection so none
// overtakes it. Only a new connection brings them all again, from the
// oldest unacknowledged, in order. A claim that moved on meanwhile needs
// nothing: its connection is new already.
func (h *Holder) reconnect(ctx context.Context, shard int) {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur == nil || cur.shard != shard || !cur.valid.Valid() || !cur.connected {
		return
	}
	h.Plugins.With(func(t transport.Transport, _ uint64) {
		dctx, cancel := context.WithTimeout(ctx, h.pluginBudget(cur, time.Second))
		defer cancel()
		if err := t.Disconnect(dctx); err != nil {
			// If the plugin kept the connection, the connect below only
			// extends it; the callback writer asks again while its cursor
			// stays stopped on it (events.Writer.redeliver).
			h.Log.Warn("transport disconnect failed; connecting again all the same", "shard", shard, "epoch", cur.epoch, "err", err)
		}
	})
	h.setConnected(cur, false, 0)
	h.ensureConnected(ctx, cur, false)
}

// layout is the shard count to tell the network (transport.Layout): as the
// settings cache last read it (pushed by the primary master at once).
func (h *Holder) layout() transport.Layout {
	n, v := h.Settings.Layout()
	return transport.Layout{Shards: n, Version: v}
}

func (h *Holder) setConnected(c *claim, v bool, gen uint64) {
	h.mu.Lock()
	if c.connected && !v {
		c.offAt = monotime.Now()
	}
	c.connected, c.pluginGen = v, gen
	if v {
		c.connectedAt = monotime.Now()
	}
	h.mu.Unlock()
	if v {
		h.statusChanged()
	}
}

// statusChanged wakes the loops that act only as the connected primary:
// a new primary sends the backlog its predecessor left (unsent messages,
// undelivered callbacks) at once, and a dispatcher whose claim ended stops
// its term at once, not at their slow safety polls.
func (h *Holder) statusChanged() {
	h.Wake()
}

// stepDown disconnects and forgets the claim. It reports whether the
// plugin confirmed the disconnect.
func (h *Holder) stepDown(reason string) (disconnected bool) {
	h.mu.Lock()
	cur := h.cur
	h.cur = nil
	h.mu.Unlock()
	if cur == nil {
		return true
	}
	h.Plugins.With(func(t transport.Transport, _ uint64) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := t.Disconnect(ctx); err != nil {
			h.Log.Warn("transport disconnect failed (its own deadline still ends the connection)", "err", err)
			return
		}
		disconnected = true
	})
	h.statusChanged()
	h.Metrics.Primary.Set(0)
	h.Metrics.Shard.Set(-1)
	h.Metrics.StepDowns.Inc()
	h.Log.Warn("stepped down", "shard", cur.shard, "epoch", cur.epoch, "reason", reason)
	return disconnected
}

// shutdown steps down and hands the claim back at once (expiry = now), so
// the master can promote a successor without waiting for the claim to lapse;
// only the network keepalive wait remains. The hand-back is safe only once
// the connection is certainly closed: confirmed by the plugin, or the plugin
// process is dead (its socket closed by the kernel).
func (h *Holder) shutdown() {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur == nil {
		return
	}
	if !h.stepDown("shutting down") && !h.Plugins.Kill() {
		return // the claim lapses by itself
	}
	h.handBack(cur)
}

// giveUp serves the master's release: a holder that has not been connected
// to the network for unhealthy_interval steps down, and hands its claim back
// when the plugin confirms it is disconnected, so the successor waits only
// the network's keepalive instead of the rest of this claim too. It reports
// whether the claim was handed back.
func (h *Holder) giveUp(r releaseReq) bool {
	h.mu.Lock()
	cur := h.cur
	h.mu.Unlock()
	if cur == nil || cur.shard != r.shard || cur.epoch != r.epoch {
		return false
	}
	if !h.stepDown("the master found this coreapp not connected to the network") {
		return false // the claim lapses by itself; the plugin's deadline ends any connection
	}
	return h.handBack(cur)
}

// handBack expires the claim in the database now; call it only once the
// connection is certainly closed.
func (h *Holder) handBack(cur *claim) bool {
	// A renewal still in flight could land after the hand-back and extend
	// the claim again: let those finish first (each ends by its claim's end).
	h.inflight.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := h.DB.ExecContext(ctx, `UPDATE shard_claims SET lease_expires = LEAST(lease_expires, NOW(6)), renewed_at = NOW(6)
		WHERE shard_id = ? AND node_id = ? AND incarnation = ? AND epoch = ?`, cur.shard, h.ID.ID, h.ID.Incarnation, cur.epoch)
	if err != nil {
		h.DBError("hand back claim", err)
		return false
	}
	n, _ := res.RowsAffected()
	return n == 1
}
