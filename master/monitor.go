package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/monotime"
)

// dbUnhealthyAfter is the original's database-based monitoring rule: a
// primary coreapp that has not written its liveness for 2 minutes is lost.
const dbUnhealthyAfter = 120 * time.Second

// report is a coreapp's answer to a heartbeat.
type report struct {
	Node        string `json:"node"`
	Incarnation int64  `json:"incarnation"`
	Primary     bool   `json:"primary"`
	Shard       int    `json:"shard"`
	Epoch       int64  `json:"epoch"`
	Connected   bool   `json:"connected"`
	ConnectDue  bool   `json:"connect_due"` // past connect_after: should be connected
	TransportOK bool   `json:"transport_ok"`
	DBAgeMS     *int64 `json:"db_age_ms"` // since its last successful database statement; -1: none
	// OffMS: how long it has been due on the network and not connected,
	// on its own clock (absent from coreapps before it was added).
	OffMS *int64 `json:"off_ms"`
}

// peer is what this master knows of one coreapp.
type peer struct {
	id          string
	incarnation int64 // from the nodes table
	keepaliveMS int64
	firstSeen   int64 // monotime this master started watching it
	lastOK      int64 // monotime of its last answer, 0 if none
	last        report
	// offSince is the monotime of the first answer in which it said it holds
	// epoch offEpoch, should be connected and is not; 0 once it says it is.
	offSince int64
	offEpoch int64
	// releasedAt is the monotime this master last replaced it for not being
	// connected to the network (0: never); its path may still be cut, so it
	// is chosen last for a while.
	releasedAt int64
	// asking: a heartbeat to it is still on its way; no second one is sent.
	asking bool
}

// noteConnection updates offSince from the answer just stored in last.
func (p *peer) noteConnection(now int64) {
	off := p.last.Primary && p.last.ConnectDue && !p.last.Connected
	switch {
	case !off:
		p.offSince = 0
	case p.offSince == 0 || p.offEpoch != p.last.Epoch:
		p.offSince, p.offEpoch = now, p.last.Epoch
	}
}

// offFor is how long, by its last answer, the coreapp has been off the
// network while it should be connected. Its own count decides: a holder
// whose connection dropped, came back and dropped again between two
// answers is off since the last drop, not since this master first heard
// it off. A coreapp that does not count (an older version) is judged from
// this master's first answer saying so.
func (p *peer) offFor(now int64) time.Duration {
	if p.last.OffMS != nil {
		return time.Duration(*p.last.OffMS) * time.Millisecond
	}
	return time.Duration(now - p.offSince)
}

// reachedDB: its last successful database statement is at most within old.
func (p *peer) reachedDB(within time.Duration) bool {
	a := p.last.DBAgeMS
	return a != nil && *a >= 0 && time.Duration(*a)*time.Millisecond <= within
}

// healthy: the coreapp answered this master within recent, from the
// incarnation the nodes table knows, with a working transport plugin.
func (p *peer) healthy(now int64, recent time.Duration) bool {
	return p.lastOK != 0 && time.Duration(now-p.lastOK) <= recent &&
		p.last.Incarnation == p.incarnation && p.last.TransportOK
}

// silence is how long the coreapp has not answered this master, counted
// from when this master started watching it if it never answered.
func (p *peer) silence(now int64) time.Duration {
	if p.lastOK != 0 {
		return time.Duration(now - p.lastOK)
	}
	return time.Duration(now - p.firstSeen)
}

// monitor heartbeats every coreapp every heartbeat_interval (every master
// does, primary or not), shares what it saw through the observations table,
// and, on the primary, keeps every shard served by one healthy coreapp.
type monitor struct {
	m      *Master
	client *http.Client
	mu     sync.Mutex
	peers  map[string]*peer
	claims map[int]claimSeen // by shard, read every round by every master
	clock  clockRead         // the database's clock at the last round's read
	step   int64             // monotime of the last round that found the clock stepped
	wake   chan struct{}     // an evaluation is wanted now (a shard was added)
	// outage: the last evaluation found most holders off the network at
	// once (networkWide); logged when it starts and ends. outageFrom and
	// outageTo are the monotimes of the last such outage's first and last
	// evaluation (outageTo 0 while it lasts): a holder that lost the
	// network in it keeps its grace after the others are back.
	outage               bool
	outageFrom, outageTo int64
}

// claimSeen is what this master last saw of a shard's claim, and when on its
// own monotonic clock it first saw the claim renewed to that expiry. A
// holder's validity ends within unhealthy_interval of its last renewal, and
// that renewal committed before this master read it: so the holder is done
// by at+unhealthy_interval on this master's clock, whatever the database's
// clock did meanwhile.
type claimSeen struct {
	epoch      int64
	leaseUS    int64 // the claim's expiry as stored (µs since 2000-01-01, the database's clock)
	at         int64 // monotime this master first read this epoch or a longer lease
	handedBack bool  // the holder shortened its lease: it let go, disconnected
	// read is the database clock reading of the round that saw it, and
	// readErr how far a forward step of that clock since the previous round
	// could have gone unnoticed (-1: one was seen, or there was no previous
	// round). While the clock has not stepped, lease_expires can be trusted.
	read    clockRead
	readErr time.Duration
}

// observe records the claims of one round, read as read.
func (mon *monitor) observe(shards []shardRow, read clockRead) {
	mon.mu.Lock()
	defer mon.mu.Unlock()
	readErr := frameErr(mon.clock, read)
	if readErr < 0 && mon.clock.sent != 0 {
		mon.step = read.recv
		mon.m.log.Warn("the database's clock stepped: successors wait on this master's clock", "db_advanced",
			time.Duration(read.dbUS-mon.clock.dbUS)*time.Microsecond, "advanced_here", time.Duration(read.recv-mon.clock.sent))
	}
	mon.clock = read
	now := read.recv
	for _, s := range shards {
		prev, ok := mon.claims[s.shard]
		switch {
		case !ok || prev.epoch != s.epoch || s.leaseUS > prev.leaseUS:
			mon.claims[s.shard] = claimSeen{epoch: s.epoch, leaseUS: s.leaseUS, at: now, read: read, readErr: readErr}
		case s.leaseUS < prev.leaseUS:
			// Renewals never shorten a lease (GREATEST) and a clock step
			// does not change a stored value: only a hand-back does, after
			// the holder's plugin confirmed the disconnect.
			prev.leaseUS, prev.handedBack = s.leaseUS, true
			mon.claims[s.shard] = prev
		}
	}
}

func (mon *monitor) claim(shard int) (claimSeen, bool) {
	mon.mu.Lock()
	defer mon.mu.Unlock()
	c, ok := mon.claims[shard]
	if mon.step > c.read.recv {
		c.readErr = -1 // the clock stepped since: its lease_expires is in another frame
	}
	return c, ok
}

func newMonitor(m *Master) *monitor {
	return &monitor{m: m, peers: map[string]*peer{}, claims: map[int]claimSeen{}, wake: make(chan struct{}, 1), client: &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute},
	}}
}

func (mon *monitor) run(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		changed := mon.m.settings.Moved()
		set := mon.m.settings.Get()
		hb := set.Heartbeat()
		mon.round(ctx, hb, set.Unhealthy())
		// Every master reads the claims every round, so one that becomes
		// primary already knows when each was last renewed on its own clock.
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second+hb)
		read := clockRead{sent: monotime.Now()}
		shards, err := mon.loadShards(qctx)
		read.recv = monotime.Now()
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				mon.m.dbError("load shards", err)
			}
		} else if len(shards) > 0 {
			read.dbUS = shards[0].dbNowUS
			mon.observe(shards, read)
		}
		if err == nil && mon.m.lease.valid.Valid() {
			if err := mon.evaluate(ctx, shards, set.Unhealthy(), hb); err != nil && !errors.Is(err, ErrNotPrimary) && ctx.Err() == nil {
				mon.m.log.Warn("shard evaluation failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-mon.wake:
		case <-time.After(hb - time.Since(start)):
		}
	}
}

// nudge asks for an evaluation at once instead of at the next heartbeat.
func (mon *monitor) nudge() {
	select {
	case mon.wake <- struct{}{}:
	default:
	}
}

// round refreshes the coreapp list, heartbeats all of them in parallel and
// records the results. A DB outage keeps the last list: heartbeats go on.
//
// An answer counts whenever it comes, up to unhealthy_interval (2 s at
// most) after its heartbeat: a coreapp answering in 60 ms at a 50 ms
// heartbeat_interval is alive, not silent. The round waits for the answers
// one heartbeat_interval at most; later ones are recorded as they arrive,
// and a coreapp still being asked is not asked again.
func (mon *monitor) round(ctx context.Context, hb, unhealthy time.Duration) {
	qctx, cancel := context.WithTimeout(ctx, hb)
	nodes, err := mon.listCoreapps(qctx)
	cancel()
	now := monotime.Now()
	mon.mu.Lock()
	if err == nil {
		seen := map[string]bool{}
		for _, n := range nodes {
			seen[n.id] = true
			p := mon.peers[n.id]
			if p == nil {
				p = &peer{id: n.id, firstSeen: now}
				mon.peers[n.id] = p
			}
			p.incarnation, p.keepaliveMS = n.incarnation, n.keepaliveMS
		}
		for id := range mon.peers {
			if !seen[id] {
				delete(mon.peers, id)
			}
		}
	} else if ctx.Err() == nil {
		mon.m.dbError("list coreapps", err)
	}
	var asked []*peer
	for _, p := range mon.peers {
		if !p.asking {
			p.asking = true
			asked = append(asked, p)
		}
	}
	mon.mu.Unlock()

	timeout := min(unhealthy, 2*time.Second)
	var wg sync.WaitGroup
	for _, p := range asked {
		wg.Add(1)
		go func(p *peer) {
			defer wg.Done()
			t0 := time.Now()
			r, err := mon.heartbeat(ctx, p.id, timeout)
			mon.m.metrics.heartbeat(err == nil, time.Since(t0))
			mon.mu.Lock()
			defer mon.mu.Unlock()
			p.asking = false
			if err != nil {
				mon.m.log.Debug("heartbeat failed", "coreapp", p.id, "err", err)
				return
			}
			if mon.peers[p.id] == p {
				now := monotime.Now()
				p.lastOK, p.last = now, r
				p.noteConnection(now)
			}
		}(p)
	}
	answered := make(chan struct{})
	go func() { wg.Wait(); close(answered) }()
	select {
	case <-answered:
	case <-ctx.Done():
	case <-time.After(hb):
	}
	if err := mon.share(ctx, hb); err != nil && ctx.Err() == nil {
		mon.m.dbError("write observations", err)
	}
}

type coreappRow struct {
	id          string
	incarnation int64
	keepaliveMS int64
}

// listCoreapps returns coreapps with liveness in the last 2×120 s: older
// rows are processes long gone.
func (mon *monitor) listCoreapps(ctx context.Context) ([]coreappRow, error) {
	rows, err := mon.m.db.QueryContext(ctx, `SELECT id, incarnation, keepalive_ms FROM nodes
		WHERE role = 'coreapp' AND last_seen > NOW(6) - INTERVAL ? SECOND`, int(2*dbUnhealthyAfter/time.Second))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []coreappRow
	for rows.Next() {
		var r coreappRow
		if err := rows.Scan(&r.id, &r.incarnation, &r.keepaliveMS); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (mon *monitor) heartbeat(ctx context.Context, id string, timeout time.Duration) (report, error) {
	var r report
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{"master": mon.m.id.ID, "primary": mon.m.lease.valid.Valid()})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+id+"/internal/heartbeat", bytes.NewReader(body))
	if err != nil {
		return r, err
	}
	req.Header.Set(cluster.SecretHeader, mon.m.secret())
	resp, err := mon.client.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("heartbeat %s: HTTP %d", id, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("heartbeat %s: %w", id, err)
	}
	return r, nil
}

// share writes this master's view, one statement per round. last_ok is
// stored on the database's clock as NOW(6) minus the locally measured
// silence, so no two hosts' clocks are ever compared.
func (mon *monitor) share(ctx context.Context, hb time.Duration) error {
	now := monotime.Now()
	mon.mu.Lock()
	var sb strings.Builder
	args := []any{}
	for _, p := range mon.peers {
		if sb.Len() > 0 {
			sb.WriteString(",")
		}
		sb.WriteString("(?, ?, NOW(6) - INTERVAL ? MICROSECOND, NOW(6))")
		args = append(args, mon.m.id.ID, p.id, p.silence(now).Microseconds())
	}
	mon.mu.Unlock()
	if len(args) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, hb)
	defer cancel()
	_, err := mon.m.db.ExecContext(ctx, `INSERT INTO observations (master_id, node_id, last_ok, updated_at) VALUES `+sb.String()+`
		ON DUPLICATE KEY UPDATE last_ok = VALUES(last_ok), updated_at = VALUES(updated_at)`, args...)
	return err
}

// shardRow is one shard as the primary evaluates it.
type shardRow struct {
	shard        int
	node         string
	incarnation  int64
	epoch        int64
	leaseLeft    time.Duration // negative: the claim lapsed
	leaseUS      int64         // the claim's expiry as stored (claimExpires), µs since 2000-01-01
	dbNowUS      int64         // NOW(6) when read, µs since 2000-01-01
	nodeInc      int64         // the holder's current incarnation in nodes, 0 if gone
	livenessAge  time.Duration
	holderHasRow bool
}

// evaluate finds shards whose primary coreapp is lost and promotes a
// healthy warm secondary for each.
func (mon *monitor) evaluate(parent context.Context, shards []shardRow, unhealthy, hb time.Duration) error {
	ctx, cancel := context.WithTimeout(parent, 2*time.Second+hb)
	defer cancel()
	secondary, err := mon.secondaryViews(ctx, hb)
	if err != nil {
		return err
	}
	now := monotime.Now()
	mon.noteOutage(now, unhealthy)
	assigned := map[string]bool{}
	for _, s := range shards {
		if s.node != "" && s.leaseLeft > 0 {
			assigned[s.node] = true
		}
	}
	for _, s := range shards {
		reason := mon.lost(s, secondary, unhealthy, now)
		if reason == "" {
			continue
		}
		cand := mon.candidate(assigned, unhealthy, hb, now)
		if cand == nil {
			mon.m.noCandidate(s.shard, reason)
			continue
		}
		pctx, pcancel := ctx, context.CancelFunc(func() {})
		if reason == reasonOffline {
			// Ask the holder to let go first: a confirmed disconnect lets
			// the successor connect after the keepalive alone. The release
			// may take seconds, so the promotion gets its own time.
			mon.releaseClaim(parent, s)
			mon.mu.Lock()
			if p := mon.peers[s.node]; p != nil {
				p.releasedAt = monotime.Now()
			}
			mon.mu.Unlock()
			pctx, pcancel = context.WithTimeout(parent, 2*time.Second+hb)
		}
		err := mon.m.promote(pctx, s, cand, reason)
		pcancel()
		if err != nil {
			if errors.Is(err, ErrNotPrimary) {
				return err
			}
			mon.m.log.Warn("promotion failed", "shard", s.shard, "coreapp", cand.id, "err", err)
			continue
		}
		assigned[cand.id] = true
	}
	return nil
}

// releasedBench: for this many unhealthy_intervals after being replaced for
// not reaching the network, a coreapp is promoted only if no other can be.
const releasedBench = 10

// reasonOffline: the holder answers heartbeats but has told this master for
// unhealthy_interval that it is not connected to the network.
const reasonOffline = "holder not connected to the network"

// releaseClaim asks the holder of s, found not connected, to step down and
// hand its claim back. Best effort: whatever it answers, the promotion that
// follows waits for the claim to run out unless it was handed back.
func (mon *monitor) releaseClaim(ctx context.Context, s shardRow) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	b, _ := json.Marshal(map[string]any{"shard": s.shard, "epoch": s.epoch})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.node+"/internal/release", bytes.NewReader(b))
	if err != nil {
		return
	}
	req.Header.Set(cluster.SecretHeader, mon.m.secret())
	req.Header.Set("Content-Type", "application/json")
	resp, err := mon.client.Do(req)
	if err != nil {
		mon.m.log.Warn("could not ask the holder to release its claim", "shard", s.shard, "coreapp", s.node, "err", err)
		return
	}
	defer resp.Body.Close()
	var out struct {
		Released bool `json:"released"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	mon.m.log.Info("asked the holder not connected to the network to release its claim", "shard", s.shard, "coreapp", s.node,
		"status", resp.StatusCode, "released", out.Released)
}

// A holder that says it is off the network is replaced because the cause
// may be its own (its path to the network cut, its plugin wedged): a
// successor elsewhere then connects. When most holders are off at once,
// the cause is the network or the path every node shares, and a successor
// would be as cut off as the holder it replaces: promoting only adds a
// reconnection to every shard once the network is back. Seen at
// heartbeat_interval 0.05 s and unhealthy_interval 0.25 s under full load:
// the network went silent for ~110 ms for everyone three times in 10
// minutes, and each time every shard was promoted (TestNoSpuriousPromotionsUnderLoad).
// So a holder that lost the network in such an outage is replaced only
// after outageGrace more, also once the others are back (the last to
// reconnect is no more at fault than the first): still replaced if the
// outage is its host's alone and the spares are elsewhere, just later.

// outageGrace is how much longer than unhealthy_interval a holder must be
// off the network to be replaced when it lost the network in an outage of
// most holders (networkWide). On the 2-core test machine under full load
// such outages lasted up to 2.1 s, every reconnection timing out until
// the network process was scheduled again.
func outageGrace(unhealthy time.Duration) time.Duration { return max(unhealthy, 5*time.Second) }

// inOutage: a holder that lost the network at monotime lostAt lost it in
// the last outage of most holders, or just before it was seen (by up to
// unhealthy: one lost earlier would have been replaced already). mon.mu
// must be held.
func (mon *monitor) inOutage(lostAt int64, unhealthy time.Duration) bool {
	return mon.outageFrom != 0 && lostAt >= mon.outageFrom-int64(unhealthy) &&
		(mon.outageTo == 0 || lostAt <= mon.outageTo)
}

// networkWide: of holders holders answering, off say they are off the
// network: two at least, and more than half.
func networkWide(holders, off int) bool { return off >= 2 && 2*off > holders }

// offHolders counts the coreapps whose last answer, within unhealthy, says
// they hold a shard and should be connected to the network, and how many of
// those say they are not. mon.mu must be held.
func (mon *monitor) offHolders(now int64, unhealthy time.Duration) (holders, off int) {
	for _, p := range mon.peers {
		if p.lastOK == 0 || time.Duration(now-p.lastOK) > unhealthy || !p.last.Primary || !p.last.ConnectDue {
			continue
		}
		holders++
		if !p.last.Connected {
			off++
		}
	}
	return holders, off
}

// noteOutage publishes how many holders are off the network and logs when
// most of them start and stop being off at once.
func (mon *monitor) noteOutage(now int64, unhealthy time.Duration) {
	mon.mu.Lock()
	holders, off := mon.offHolders(now, unhealthy)
	wide, was := networkWide(holders, off), mon.outage
	mon.outage = wide
	switch {
	case wide && !was:
		mon.outageFrom, mon.outageTo = now, 0
	case !wide && was:
		mon.outageTo = now
	}
	mon.mu.Unlock()
	mon.m.metrics.holdersOff.Set(float64(off))
	switch {
	case wide && !was:
		mon.m.log.Warn("most primary coreapps are off the network at once: a network outage, not theirs; they are replaced only if it lasts",
			"off", off, "holders", holders, "replaced_after", unhealthy+outageGrace(unhealthy))
	case !wide && was:
		mon.m.log.Info("the network outage is over for most primary coreapps", "off", off, "holders", holders)
	}
}

// lost says why shard s needs a new primary coreapp, or "" if it does not.
func (mon *monitor) lost(s shardRow, secondary map[string][]time.Duration, unhealthy time.Duration, now int64) string {
	switch {
	case s.node == "":
		return "unassigned"
	case s.leaseLeft <= 0:
		return "claim lapsed"
	case !s.holderHasRow || s.nodeInc != s.incarnation:
		return "holder restarted"
	case s.livenessAge > dbUnhealthyAfter:
		return "no liveness in the database for 120s"
	}
	mon.mu.Lock()
	p := mon.peers[s.node]
	own := time.Duration(0)
	if p != nil {
		own = p.silence(now)
	}
	offline := p != nil && p.offSince != 0 && p.last.Shard == s.shard && p.last.Epoch == s.epoch &&
		p.offFor(now) >= unhealthy
	// mon.outage is this round's (evaluate notes it before asking).
	if offline && (mon.outage || mon.inOutage(now-int64(p.offFor(now)), unhealthy)) {
		offline = p.offFor(now) >= unhealthy+outageGrace(unhealthy)
	}
	mon.mu.Unlock()
	if own < unhealthy {
		if offline {
			return reasonOffline
		}
		return ""
	}
	// Heartbeat-based monitoring applies when more than one master runs: the
	// primary and one secondary master must both have lost the coreapp.
	for _, silence := range secondary[s.node] {
		if silence >= unhealthy {
			return "heartbeats unanswered"
		}
	}
	return ""
}

func (mon *monitor) loadShards(ctx context.Context) ([]shardRow, error) {
	rows, err := mon.m.db.QueryContext(ctx, `SELECT s.shard_id, COALESCE(s.node_id, ''), s.incarnation, s.epoch,
			TIMESTAMPDIFF(MICROSECOND, NOW(6), `+claimExpires+`), TIMESTAMPDIFF(MICROSECOND, '2000-01-01', `+claimExpires+`),
			TIMESTAMPDIFF(MICROSECOND, '2000-01-01', NOW(6)),
			COALESCE(n.incarnation, 0), COALESCE(TIMESTAMPDIFF(MICROSECOND, n.last_seen, NOW(6)), 0), n.id IS NOT NULL
		FROM shard_map s JOIN cluster k ON k.id = 1 AND s.shard_id < k.shards
		LEFT JOIN shard_claims c ON c.shard_id = s.shard_id
		LEFT JOIN nodes n ON n.id = s.node_id ORDER BY s.shard_id`)
	if err != nil {
		return nil, fmt.Errorf("load shards: %w", err)
	}
	defer rows.Close()
	var out []shardRow
	for rows.Next() {
		var s shardRow
		var left, age int64
		if err := rows.Scan(&s.shard, &s.node, &s.incarnation, &s.epoch, &left, &s.leaseUS, &s.dbNowUS, &s.nodeInc, &age, &s.holderHasRow); err != nil {
			return nil, fmt.Errorf("load shards: %w", err)
		}
		s.leaseLeft, s.livenessAge = time.Duration(left)*time.Microsecond, time.Duration(age)*time.Microsecond
		out = append(out, s)
	}
	return out, rows.Err()
}

// secondaryViews returns, per coreapp, the silence each live secondary
// master reports. A master whose observations are stale (it is down) has no
// say: heartbeat monitoring needs a secondary that is itself alive.
func (mon *monitor) secondaryViews(ctx context.Context, hb time.Duration) (map[string][]time.Duration, error) {
	fresh := 3 * hb
	if fresh < time.Second {
		fresh = time.Second
	}
	rows, err := mon.m.db.QueryContext(ctx, `SELECT node_id, TIMESTAMPDIFF(MICROSECOND, last_ok, NOW(6)) FROM observations
		WHERE master_id <> ? AND updated_at > NOW(6) - INTERVAL ? MICROSECOND`, mon.m.id.ID, fresh.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("read observations: %w", err)
	}
	defer rows.Close()
	out := map[string][]time.Duration{}
	for rows.Next() {
		var node string
		var us int64
		if err := rows.Scan(&node, &us); err != nil {
			return nil, fmt.Errorf("read observations: %w", err)
		}
		out[node] = append(out[node], time.Duration(us)*time.Microsecond)
	}
	return out, rows.Err()
}

// candidate picks a healthy warm secondary: it answered this master
// recently, from the incarnation the nodes table knows, holds no shard, has
// a working transport plugin and reached MySQL within unhealthy_interval
// (one that cannot could not take the shard, which would wait on it).
func (mon *monitor) candidate(assigned map[string]bool, unhealthy, hb time.Duration, now int64) *peer {
	recent := 3 * hb
	if recent > unhealthy {
		recent = unhealthy
	}
	mon.mu.Lock()
	defer mon.mu.Unlock()
	var ok []*peer
	for _, p := range mon.peers {
		if !p.healthy(now, recent) || assigned[p.id] || p.last.Shard >= 0 || !p.reachedDB(unhealthy) {
			continue
		}
		ok = append(ok, p)
	}
	if len(ok) == 0 {
		return nil
	}
	// One replaced lately for not reaching the network comes last: its path
	// may still be cut. Otherwise the freshest answer is the best evidence
	// of health, ties broken by id for determinism.
	benched := func(p *peer) bool {
		return p.releasedAt != 0 && time.Duration(now-p.releasedAt) < releasedBench*unhealthy
	}
	sort.Slice(ok, func(i, j int) bool {
		if bi, bj := benched(ok[i]), benched(ok[j]); bi != bj {
			return bj
		}
		if ok[i].lastOK != ok[j].lastOK {
			return ok[i].lastOK > ok[j].lastOK
		}
		return ok[i].id < ok[j].id
	})
	c := *ok[0]
	return &c
}

// txQuerier lets fenced transactions use helpers written for cluster.Querier.
var _ cluster.Querier = (*sql.Tx)(nil)
