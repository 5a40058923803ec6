package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/time/rate"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// Engine is the Sender of the Cloud API transport: one per plugin, that
// is one per shard's primary coreapp.
type Engine struct {
	cfg   Config
	post  Poster
	store Store
	lim   *rate.Limiter
	// pace serializes the requests' last wait; left holds when the last
	// requests left (a ring, next the oldest): see space.
	pace sync.Mutex
	left []time.Time
	next int

	mu          sync.Mutex
	node        string // recorded with each attempt (SetNode)
	shard       int
	shards      int
	pausedUntil time.Time // the number is throttled (130429, 80007, 4)
	throttle    *backoff.ExponentialBackOff
	tokenErr    string    // 190: why sending stopped
	tokenUntil  time.Time // the next time the token is tried
	held        map[string]*hold
}

// hold delays one recipient (pair limit, retries exhausted).
type hold struct {
	until time.Time
	b     *backoff.ExponentialBackOff
}

// NewEngine returns an engine posting through p and recording attempts
// in s.
func NewEngine(cfg Config, p Poster, s Store) *Engine {
	cfg = cfg.withDefaults()
	e := &Engine{cfg: cfg, post: p, store: s, held: map[string]*hold{}, node: cfg.Node,
		throttle: newBackoff(cfg.ThrottleInitial, cfg.ThrottleMax)}
	e.lim = rate.NewLimiter(rate.Inf, 1)
	e.SetLayout(cfg.Shard, cfg.Shards)
	return e
}

func newBackoff(initial, max time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.Multiplier = initial, max, 2
	b.Reset()
	return b
}

// Share is shard's part of a number's limit of limit messages/s split
// among shards: the integer quotient, plus one for the first limit%shards
// shards, so the parts add up to limit exactly. When limit < shards the
// parts are limit/shards each (fractions: the sum is the limit on average,
// not within every second).
func Share(limit, shard, shards int) rate.Limit {
	if shards < 1 {
		shards = 1
	}
	if limit < shards {
		return rate.Limit(float64(limit) / float64(shards))
	}
	s := limit / shards
	if shard%shards < limit%shards {
		s++
	}
	return rate.Limit(s)
}

// SetLayout sets this engine's shard and the cluster's shard count (the
// transport Layout of Connect and Extend), and with them its budget.
func (e *Engine) SetLayout(shard, shards int) {
	if shards < 1 {
		shards = 1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.shard, e.shards = shard, shards
	if e.cfg.Unlimited || e.cfg.Throughput <= 0 {
		e.lim.SetLimit(rate.Inf)
		return
	}
	// The bucket only paces the attempts' records; the limit itself is
	// held where requests leave (space). Its burst is one window's worth,
	// so that a waiter that woke late is made up for, not lost.
	share := Share(e.cfg.Throughput, shard, shards)
	e.lim.SetLimit(share)
	e.lim.SetBurst(windowOf(share))
}

// SetNode names the coreapp the attempts are recorded for (the claim's
// node, from Connect): a new primary's records then say who sent what.
func (e *Engine) SetNode(node string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.node = node
}

func (e *Engine) nodeName() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.node
}

// Limit is the engine's current budget in messages/s.
func (e *Engine) Limit() rate.Limit { return e.lim.Limit() }

// TokenError says why sending is stopped on an invalid access token (190),
// "" when it is not: the plugin's Health shows it.
func (e *Engine) TokenError() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tokenErr
}

// NotBefore is when the number can send again: after a throttle backoff
// or the next token try; the zero time when it can now.
func (e *Engine) NotBefore() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.pausedUntil
	if e.tokenErr != "" && e.tokenUntil.After(t) {
		t = e.tokenUntil
	}
	if !t.After(time.Now()) {
		return time.Time{}
	}
	return t
}

// batch is the state of one Send.
type batch struct {
	e       *Engine
	msgs    []Outgoing
	res     []Result
	recs    map[string]Record
	stopped atomic.Value // string: why the whole number stopped in this Send
}

func (b *batch) stop(why string) { b.stopped.CompareAndSwap(nil, why) }
func (b *batch) stopReason() string {
	if v := b.stopped.Load(); v != nil {
		return v.(string)
	}
	return ""
}

// Send implements Sender. It returns one Result per message, in order;
// it never holds a Send past ctx's deadline (what it could not do in
// time is Later).
func (e *Engine) Send(ctx context.Context, msgs []Outgoing) []Result {
	b := &batch{e: e, msgs: msgs, res: make([]Result, len(msgs))}
	for i, m := range msgs {
		b.res[i] = Result{ID: m.ID, Outcome: Later}
	}
	if len(msgs) == 0 {
		return b.res
	}
	why, probe := e.gate(ctx)
	if why != "" {
		for i := range b.res {
			b.res[i].Detail = why
		}
		return b.res
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	recs, err := e.store.Load(ctx, ids)
	if err != nil {
		// Without the records we cannot tell a sent message from a new
		// one: send nothing.
		for i := range b.res {
			b.res[i].Detail = err.Error()
		}
		return b.res
	}
	b.recs = recs

	// One queue per recipient, in the batch's order; recipients run
	// concurrently, each one's messages one at a time.
	var order []string
	queues := map[string][]int{}
	for i, m := range msgs {
		if _, ok := queues[m.To]; !ok {
			order = append(order, m.To)
		}
		queues[m.To] = append(queues[m.To], i)
	}
	conc := e.cfg.Concurrency
	if probe {
		// The token failed before: one request at a time, so a token
		// still invalid costs one request, not Concurrency.
		conc = 1
	}
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, to := range order {
		q := queues[to]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			b.recipient(ctx, q)
		}()
	}
	wg.Wait()
	return b.res
}

// gate waits out a throttle pause when it ends within ctx, and says why
// nothing can be sent otherwise; probe: the token failed before and this
// Send tries it again.
func (e *Engine) gate(ctx context.Context) (why string, probe bool) {
	e.mu.Lock()
	now := time.Now()
	if e.tokenErr != "" {
		if now.Before(e.tokenUntil) {
			why := "access token invalid (190), next try at " + e.tokenUntil.UTC().Format(time.RFC3339) + ": " + e.tokenErr
			e.mu.Unlock()
			return why, false
		}
		// This Send is the try: the next one is TokenRetry away
		// whatever happens (a concurrent Send does not try too).
		e.tokenUntil = now.Add(e.cfg.TokenRetry)
		probe = true
	}
	until := e.pausedUntil
	e.mu.Unlock()
	if !now.Before(until) {
		return "", probe
	}
	if dl, ok := ctx.Deadline(); ok && until.After(dl) {
		return "number throttled until " + until.UTC().Format(time.RFC3339Nano), false
	}
	t := time.NewTimer(until.Sub(now))
	defer t.Stop()
	select {
	case <-t.C:
		return "", probe
	case <-ctx.Done():
		return "number throttled: " + ctx.Err().Error(), false
	}
}

// recipient sends one recipient's messages (indexes into msgs) in order;
// the first that is not done leaves itself and the rest Later.
func (b *batch) recipient(ctx context.Context, q []int) {
	for n, i := range q {
		if !b.one(ctx, i) {
			for _, j := range q[n+1:] {
				b.res[j].Detail = "behind " + b.msgs[i].ID + " of the same recipient"
			}
			return
		}
	}
}

// one settles message i: Sent or Failed (true), or Later (false).
func (b *batch) one(ctx context.Context, i int) bool {
	e, m, r := b.e, b.msgs[i], &b.res[i]
	if rec, ok := b.recs[m.ID]; ok {
		switch rec.State {
		case StateSent:
			// Posted before (a batch sent again after its answer was
			// lost): never again.
			r.Outcome, r.WAMID, r.Detail = Sent, rec.WAMID, "sent before"
			return true
		case StateFailed:
			r.Outcome, r.Err = Failed, rec.Err
			if r.Err == nil {
				r.Err = &graphapi.Error{Message: "failed before"}
			}
			return true
		case StateSending, StateUnknown:
			if done, send := b.unknown(ctx, i, rec); !send {
				return done
			}
		}
	}
	if h := e.holdOf(m.To); h != "" {
		r.Detail = h
		return false
	}
	for attempt := 1; ; attempt++ {
		if why := b.stopReason(); why != "" {
			r.Detail = why
			return false
		}
		if err := e.acquire(ctx); err != nil {
			r.Detail = "throughput budget: " + err.Error()
			return false
		}
		if why := b.stopReason(); why != "" {
			r.Detail = why
			return false
		}
		if err := e.store.Begin(ctx, m, e.nodeName(), time.Now()); err != nil {
			r.Detail = err.Error()
			return false
		}
		if err := e.space(ctx); err != nil {
			b.finish(ctx, m.ID, StatePending, nil)
			r.Detail = "throughput budget: " + err.Error()
			return false
		}
		wamid, err := e.post.Post(ctx, m)
		class, gerr, retryIn := b.classify(m, err, attempt)
		switch class {
		case classSent:
			e.succeeded(m.To)
			if ferr := e.store.Finish(ctx, m.ID, StateSent, wamid, nil, time.Now()); ferr != nil {
				// Sent all the same; the next Send finds "sending" and
				// treats it as unknown, then finds its status.
				e.cfg.Log.Warn("cloudapi: record sent", "id", m.ID, "err", ferr)
			}
			r.Outcome, r.WAMID, r.Detail = Sent, wamid, ""
			return true
		case classFailed:
			b.finish(ctx, m.ID, StateFailed, gerr)
			r.Outcome, r.Err, r.Detail = Failed, gerr, ""
			return true
		case classUnknown:
			b.finish(ctx, m.ID, StateUnknown, nil)
			r.Detail = "outcome unknown, waiting for its status: " + err.Error()
			return false
		case classRetry:
			b.finish(ctx, m.ID, StatePending, gerr)
			if retryIn > 0 && sleep(ctx, retryIn) {
				continue
			}
			e.holdRecipient(m.To, e.cfg.RetryInitial, e.cfg.RetryMax)
			r.Detail = "retries exhausted for now: " + err.Error()
			return false
		default: // classLater: throttle, pair limit, token, refused
			b.finish(ctx, m.ID, StatePending, gerr)
			r.Detail = err.Error()
			return false
		}
	}
}

type outcomeClass int

const (
	classSent outcomeClass = iota
	classFailed
	classUnknown
	classRetry
	classLater
)

// classify turns a Post's answer into what to do, and applies its
// effect on the number (throttle, token) or the recipient (pair limit).
// retryIn is the backoff before the next attempt of a retry (0: no more
// attempts in this Send).
func (b *batch) classify(m Outgoing, err error, attempt int) (outcomeClass, *graphapi.Error, time.Duration) {
	e := b.e
	if err == nil {
		return classSent, nil, 0
	}
	var unk *graph.UnknownError
	if errors.As(err, &unk) {
		return classUnknown, nil, 0
	}
	var gerr *graphapi.Error
	if !errors.As(err, &gerr) {
		// Refused before it left (deadline passed, context ended).
		return classLater, nil, 0
	}
	switch graphapi.Classify(gerr) {
	case graphapi.Permanent:
		return classFailed, gerr, 0
	case graphapi.Retry:
		if attempt >= e.cfg.Retries {
			return classRetry, gerr, 0
		}
		bo := newBackoff(e.cfg.RetryInitial, e.cfg.RetryMax)
		var d time.Duration
		for k := 0; k < attempt; k++ {
			d = bo.NextBackOff()
		}
		return classRetry, gerr, d
	case graphapi.Throttle:
		until := e.throttled()
		b.stop(fmt.Sprintf("number throttled (code %d) until %s", gerr.Code, until.UTC().Format(time.RFC3339Nano)))
		return classLater, gerr, 0
	case graphapi.PairLimit:
		e.holdRecipient(m.To, e.cfg.PairInitial, e.cfg.PairMax)
		return classLater, gerr, 0
	case graphapi.TokenInvalid:
		e.mu.Lock()
		e.tokenErr = gerr.Message
		e.tokenUntil = time.Now().Add(e.cfg.TokenRetry)
		e.mu.Unlock()
		e.cfg.Log.Error("cloudapi: access token invalid, sending stopped", "code", gerr.Code, "retry_in", e.cfg.TokenRetry)
		b.stop("access token invalid (190)")
		return classLater, gerr, 0
	}
	return classLater, gerr, 0
}

func (b *batch) finish(ctx context.Context, id string, st State, gerr *graphapi.Error) {
	if err := b.e.store.Finish(ctx, id, st, "", gerr, time.Now()); err != nil {
		// The record stays "sending": the next Send treats the message
		// as unknown, which is safe (never a blind resend).
		b.e.cfg.Log.Warn("cloudapi: record send outcome", "id", id, "state", st, "err", err)
	}
}

// unknown resolves a message whose last attempt's outcome is unknown.
// send: post it again now; otherwise done says Sent/Failed (true) or
// Later (false).
func (b *batch) unknown(ctx context.Context, i int, rec Record) (done, send bool) {
	e, m, r := b.e, b.msgs[i], &b.res[i]
	seen, err := e.store.StatusSeen(ctx, m.ID)
	if err != nil {
		r.Detail = err.Error()
		return false, false
	}
	if seen.Found {
		// Meta processed it: it is sent, whatever the status says (a
		// failed status reaches the webhook on its own).
		wamid := seen.WAMID
		if wamid == "" {
			wamid = rec.WAMID
		}
		if err := e.store.Finish(ctx, m.ID, StateSent, wamid, nil, time.Now()); err != nil {
			r.Detail = err.Error()
			return false, false
		}
		r.Outcome, r.WAMID, r.Detail = Sent, wamid, "outcome was unknown; a "+seen.Status+" status named it"
		e.succeeded(m.To)
		return true, false
	}
	waited := time.Since(rec.LastAt)
	if waited < e.cfg.UnknownWait {
		r.Detail = fmt.Sprintf("outcome unknown since %s, waiting up to %s for its status", rec.LastAt.UTC().Format(time.RFC3339), e.cfg.UnknownWait)
		return false, false
	}
	switch e.cfg.Policy {
	case PolicyResend:
		e.cfg.Log.Info("cloudapi: no status for a send of unknown outcome, sending again", "id", m.ID, "waited", waited.Round(time.Millisecond))
		return false, true
	case PolicyWait:
		if waited < e.cfg.UnknownMaxWait {
			r.Detail = fmt.Sprintf("outcome unknown since %s, waiting up to %s for its status", rec.LastAt.UTC().Format(time.RFC3339), e.cfg.UnknownMaxWait)
			return false, false
		}
	}
	gerr := &graphapi.Error{Code: CodeOutcomeUnknown, Message: fmt.Sprintf("outcome of the send unknown and no status within %s (policy %s)", waited.Round(time.Second), e.cfg.Policy)}
	b.finish(ctx, m.ID, StateFailed, gerr)
	r.Outcome, r.Err, r.Detail = Failed, gerr, ""
	return true, false
}

// CodeOutcomeUnknown is the code of the error a message fails with when
// its outcome stayed unknown (policies fail and wait). It is not a Graph
// code: Graph codes are positive.
const CodeOutcomeUnknown = -1

// throttled starts the number's pause, or lengthens the backoff when a
// request sent after the last pause is throttled again. Answers to
// requests that were in flight together count once: sixteen 130429s of
// one burst are one signal, not sixteen doublings.
func (e *Engine) throttled() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if now.Before(e.pausedUntil) {
		return e.pausedUntil
	}
	e.pausedUntil = now.Add(e.throttle.NextBackOff())
	return e.pausedUntil
}

// succeeded ends the backoffs a success proves over.
func (e *Engine) succeeded(to string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if time.Now().After(e.pausedUntil) {
		e.throttle.Reset()
	}
	e.tokenErr = ""
	delete(e.held, to)
}

func (e *Engine) holdRecipient(to string, initial, max time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.held[to]
	if h == nil {
		if len(e.held) >= 10000 {
			// Forget holds long over, so the map stays small.
			for k, o := range e.held {
				if time.Since(o.until) > max {
					delete(e.held, k)
				}
			}
		}
		h = &hold{b: newBackoff(initial, max)}
		e.held[to] = h
	}
	h.until = time.Now().Add(h.b.NextBackOff())
}

func (e *Engine) holdOf(to string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.held[to]
	if h == nil || !time.Now().Before(h.until) {
		return ""
	}
	return "recipient held until " + h.until.UTC().Format(time.RFC3339Nano)
}

// headroom stretches the window by 1%: a request may leave once the
// request windowOf(share) before it left 1.01 s ago, which absorbs up to
// 10 ms of scheduling between that decision and the request reaching the
// Graph API.
const headroom = 1.01

// windowOf is how many requests a shard may send in any window of
// windowOf/share seconds: the share in one second, or one when the share
// is below 1/s.
func windowOf(share rate.Limit) int {
	return max(1, int(share))
}

// acquire waits for the budget: the token bucket (x/time/rate). It paces
// the attempts' records, so that few messages are recorded "sending"
// while they wait for their turn; the limit rests on space, after the
// record.
func (e *Engine) acquire(ctx context.Context) error {
	if e.lim.Limit() == rate.Inf {
		return nil
	}
	return e.lim.Wait(ctx)
}

// space holds the share where it counts, just before the request leaves:
// no window of 1 s (stretched by headroom) holds more than the share of
// requests leaving. It keeps when the last share requests left and waits
// until the oldest of them is a window old. Spacing at the bucket did not
// hold it: between the bucket and the request lies the attempt's record
// in MySQL, whose group commit returns records in bunches after varying
// waits, and one second at the Graph API held 86 requests at a limit of
// 80 (BenchmarkCloudAPIThroughput); and requests spaced 1/share apart from
// the previous one lose every late wake-up for good (55-70/s at 80/s
// there), where the window makes up for it.
func (e *Engine) space(ctx context.Context) error {
	share := e.lim.Limit()
	if share == rate.Inf {
		return nil
	}
	e.pace.Lock()
	defer e.pace.Unlock()
	k := windowOf(share)
	if len(e.left) != k {
		// A new share (the shard count changed): as if the last window
		// had been full at the last request, so the change never lets a
		// burst through.
		var last time.Time
		if len(e.left) > 0 {
			last = e.left[(e.next+len(e.left)-1)%len(e.left)]
		}
		e.left, e.next = make([]time.Time, k), 0
		for i := range e.left {
			e.left[i] = last
		}
	}
	window := time.Duration(headroom * float64(k) * float64(time.Second) / float64(share))
	// Catching up is at twice the share at most, not a window's worth at
	// once: a burst of requests let go together on a busy machine leaves
	// when each one's goroutine gets to run, and those late ones bunched
	// with the next window's (51 in one second at a share of 40 by the
	// sender's clock in BenchmarkCloudAPIThroughput).
	last := e.left[(e.next+k-1)%k]
	wait := max(time.Until(e.left[e.next].Add(window)), time.Until(last.Add(window/time.Duration(2*k))))
	if wait > 0 && !sleep(ctx, wait) {
		return fmt.Errorf("next request in %v is past the deadline", wait)
	}
	e.left[e.next] = time.Now()
	e.next = (e.next + 1) % k
	return nil
}

// sleep waits d unless ctx ends first (or would end during it).
func sleep(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
