package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/internal/webhook"
)

const (
	// webhookBatch is how many consecutive callbacks of one kind for one
	// lane go in one POST (the original's payloads are arrays).
	webhookBatch = 100
	// webhookQueue bounds the callbacks loaded but not delivered yet.
	webhookQueue = 20000
	// webhookPoll is a safety net only: stored callbacks, a new claim or
	// connection, a step-down, a settings change (any row: the webhook CA
	// too) and room in a full queue all wake the dispatcher; a failed POST is retried by its
	// lane on the callback backoff, not by this poll.
	webhookPoll    = 10 * time.Second
	webhookTimeout = 20 * time.Second
	markEvery      = 20 * time.Millisecond
)

// dispatcher posts the shard's callbacks to webhooks.url, only while this
// coreapp is the shard's primary. Recipients are spread over
// max_concurrent_requests lanes by hash; a lane posts its callbacks in seq
// order, one request at a time, and retries a request the webhook did not
// answer with 200 after the original's linear backoff. So callbacks of one
// recipient arrive in order, and at most max_concurrent_requests are in
// flight. Delivered callbacks are marked in MySQL; a new primary starts
// from the unmarked ones (at least once).
type dispatcher struct {
	c    *Coreapp
	wake chan struct{}
	mu   sync.Mutex
	mem  []*callback // callbacks not persisted (callback_persist false)
	next int64       // memory sequence, negative so it never meets a stored seq
	// posts numbers this holder's POSTs for postsOf (shard and epoch), in
	// the order they are sent: the X-Multiconnect-Sequence header.
	posts   int64
	postsOf [2]int64
	ca      *webhookCA
}

// Headers every webhook POST carries, so a receiver can tell which holder
// sent it and order POSTs: epochs of a shard only grow, and within one
// epoch the sequence grows with every POST (retries included).
const (
	hdrShard    = "X-Multiconnect-Shard"
	hdrEpoch    = "X-Multiconnect-Epoch"
	hdrSequence = "X-Multiconnect-Sequence"
)

// nextPost returns the sequence number of the next POST of st's term.
func (d *dispatcher) nextPost(st status) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if of := [2]int64{int64(st.Shard), st.Epoch}; d.postsOf != of {
		d.postsOf, d.posts = of, 0
	}
	d.posts++
	return d.posts
}

func newDispatcher(c *Coreapp) *dispatcher {
	return &dispatcher{c: c, wake: make(chan struct{}, 1), ca: newWebhookCA(c)}
}

func (d *dispatcher) nudge() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// remember queues callbacks that are not persisted.
func (d *dispatcher) remember(cbs []*callback) {
	d.mu.Lock()
	for _, cb := range cbs {
		d.next--
		cb.seq = d.next
		d.mem = append(d.mem, cb)
	}
	if over := len(d.mem) - webhookQueue*5; over > 0 {
		d.c.log.Warn("webhook unreachable and callback_persist is off: dropping the oldest callbacks", "dropped", over)
		d.mem = append([]*callback(nil), d.mem[over:]...)
	}
	d.mu.Unlock()
	d.nudge()
}

func (d *dispatcher) takeMemory(shard int) []*callback {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out, rest []*callback
	for _, cb := range d.mem {
		if cb.shard == shard {
			out = append(out, cb)
		} else {
			rest = append(rest, cb)
		}
	}
	d.mem = rest
	return out
}

// run serves one term at a time: a term lasts while this coreapp is primary
// for one shard and epoch and the webhook settings stay the same.
func (d *dispatcher) run(ctx context.Context) {
	for {
		changed := d.c.settings.Moved()
		st := d.c.holder.status()
		s := d.c.settings.Get()
		if st.Primary && s.Webhooks.URL != "" {
			d.term(ctx, st, s.Webhooks)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-changed:
		case <-time.After(webhookPoll):
		}
	}
}

type lane struct {
	mu   sync.Mutex
	q    []*callback
	wake chan struct{}
}

func (d *dispatcher) term(ctx context.Context, st status, hooks settings.Webhooks) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	d.c.log.Info("delivering callbacks", "shard", st.Shard, "epoch", st.Epoch, "url", hooks.URL, "max_concurrent_requests", hooks.MaxConcurrentRequests)
	tlsCfg, caKey := d.ca.current(ctx)
	client := &http.Client{Timeout: webhookTimeout, Transport: &http.Transport{
		MaxConnsPerHost: hooks.MaxConcurrentRequests, MaxIdleConnsPerHost: hooks.MaxConcurrentRequests,
		IdleConnTimeout: 90 * time.Second, TLSClientConfig: tlsCfg,
	}}
	defer client.CloseIdleConnections()
	marks := make(chan int64, webhookQueue)
	wg.Add(1)
	go func() { defer wg.Done(); d.mark(ctx, marks) }()
	lanes := make([]*lane, hooks.MaxConcurrentRequests)
	var pending int64 // callbacks loaded and not yet delivered
	var pmu sync.Mutex
	for i := range lanes {
		l := &lane{wake: make(chan struct{}, 1)}
		lanes[i] = l
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.serveLane(ctx, client, hooks.URL, st, l, func(cbs []*callback) {
				for _, cb := range cbs {
					if cb.seq > 0 {
						select {
						case marks <- cb.seq:
						case <-ctx.Done():
						}
					}
				}
				pmu.Lock()
				full := pending >= webhookQueue
				pending -= int64(len(cbs))
				pmu.Unlock()
				if full {
					d.nudge() // room again: load the rest of the backlog now
				}
			})
		}()
	}
	var last int64
	for {
		changed := d.c.settings.Moved()
		cur := d.c.holder.status()
		s := d.c.settings.Get()
		if !cur.Primary || cur.Shard != st.Shard || cur.Epoch != st.Epoch || s.Webhooks.URL != hooks.URL ||
			s.Webhooks.MaxConcurrentRequests != hooks.MaxConcurrentRequests || d.caChanged(ctx, caKey) {
			d.c.log.Info("stopped delivering callbacks", "shard", st.Shard, "epoch", st.Epoch)
			return
		}
		pmu.Lock()
		room := webhookQueue - pending
		pmu.Unlock()
		if room > 0 {
			cbs, err := d.load(ctx, st.Shard, last, room)
			if err != nil && ctx.Err() == nil {
				d.c.dbError("load callbacks", err)
			}
			cbs = append(cbs, d.takeMemory(st.Shard)...)
			pmu.Lock()
			pending += int64(len(cbs))
			pmu.Unlock()
			for _, cb := range cbs {
				if cb.seq > last {
					last = cb.seq
				}
				l := lanes[laneOf(cb.recipient, len(lanes))]
				l.mu.Lock()
				l.q = append(l.q, cb)
				l.mu.Unlock()
				select {
				case l.wake <- struct{}{}:
				default:
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-changed:
		case <-time.After(webhookPoll):
		}
	}
}

// caChanged says whether the webhook CA changed since the term began (the
// term's client then ends with the term; the next one trusts the new CA).
func (d *dispatcher) caChanged(ctx context.Context, key [32]byte) bool {
	_, now := d.ca.current(ctx)
	return now != key
}

func laneOf(recipient string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(recipient))
	return int(h.Sum32() % uint32(n))
}

func (d *dispatcher) load(ctx context.Context, shard int, after, limit int64) ([]*callback, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs, err := d.c.db.QueryContext(qctx, `SELECT seq, recipient, kind, payload FROM callbacks
		WHERE shard_id = ? AND delivered = 0 AND seq > ? ORDER BY seq LIMIT ?`, shard, after, min(limit, 5000))
	if err != nil {
		return nil, fmt.Errorf("load callbacks of shard %d: %w", shard, err)
	}
	defer rs.Close()
	var out []*callback
	for rs.Next() {
		cb := &callback{shard: shard}
		if err := rs.Scan(&cb.seq, &cb.recipient, &cb.kind, &cb.payload); err != nil {
			return out, err
		}
		out = append(out, cb)
	}
	return out, rs.Err()
}

// serveLane posts the lane's callbacks in order until ctx ends.
func (d *dispatcher) serveLane(ctx context.Context, client *http.Client, url string, st status, l *lane, delivered func([]*callback)) {
	attempts := 0
	for {
		l.mu.Lock()
		n := 0
		for n < len(l.q) && n < webhookBatch && l.q[n].kind == l.q[0].kind {
			n++
		}
		batch := l.q[:n:n]
		l.mu.Unlock()
		if n == 0 {
			select {
			case <-ctx.Done():
				return
			case <-l.wake:
				continue
			}
		}
		err := d.post(ctx, client, url, st, batch)
		if ctx.Err() != nil || errors.Is(err, errNotHolder) {
			return
		}
		if err != nil {
			attempts++
			wait := d.c.settings.Get().CallbackBackoff(attempts)
			d.c.metrics.webhookFailures.Inc()
			d.c.log.Warn("webhook did not take callbacks; retrying", "url", url, "callbacks", n, "attempt", attempts, "in", wait, "err", err)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		attempts = 0
		l.mu.Lock()
		l.q = l.q[n:]
		l.mu.Unlock()
		d.c.metrics.callbacksDelivered.Add(float64(n))
		delivered(batch)
	}
}

// errNotHolder: the term's claim ended; its callbacks are the next holder's.
var errNotHolder = errors.New("no longer the shard's primary")

// post sends one batch of callbacks of one kind in the original's payload,
// with no envelope. Only a 200 counts as delivered, as in the original.
func (d *dispatcher) post(ctx context.Context, client *http.Client, url string, st status, batch []*callback) error {
	var b bytes.Buffer
	if batch[0].kind == kindStatus {
		b.WriteString(`{"statuses":[`)
		for i, cb := range batch {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(cb.payload)
		}
		b.WriteString(`]}`)
	} else {
		// Stored as {"contact":C,"message":M}; the payload is
		// {"contacts":[C...],"messages":[M...]}.
		var contacts, messages []string
		for _, cb := range batch {
			c, m := splitInbound(cb.payload)
			contacts, messages = append(contacts, c), append(messages, m)
		}
		b.WriteString(`{"contacts":[` + strings.Join(contacts, ",") + `],"messages":[` + strings.Join(messages, ",") + `]}`)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &b)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(hdrShard, strconv.Itoa(st.Shard))
	req.Header.Set(hdrEpoch, strconv.FormatInt(st.Epoch, 10))
	req.Header.Set(hdrSequence, strconv.FormatInt(d.nextPost(st), 10))
	// The claim is read here, on the monotonic clock, right before the
	// request goes out: a primary frozen anywhere before this line finds
	// its claim over when it wakes and posts nothing. (One frozen inside
	// the write can still finish it on waking; the epoch header lets the
	// receiver drop it.)
	if cur := d.c.holder.status(); !cur.Primary || cur.Shard != st.Shard || cur.Epoch != st.Epoch {
		return errNotHolder
	}
	return webhook.Do(client, req)
}

// splitInbound returns the contact and message of a stored inbound callback.
func splitInbound(payload []byte) (contact, message string) {
	var p struct {
		Contact json.RawMessage `json:"contact"`
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || len(p.Contact) == 0 || len(p.Message) == 0 {
		return "{}", string(payload) // cannot happen: fromEvent made it
	}
	return string(p.Contact), string(p.Message)
}

// mark records delivered callbacks in batches.
func (d *dispatcher) mark(ctx context.Context, in <-chan int64) {
	var seqs []any
	flush := func() {
		if len(seqs) == 0 {
			return
		}
		qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q := `UPDATE callbacks SET delivered = 1, delivered_at = NOW(6) WHERE seq IN (?` + strings.Repeat(",?", len(seqs)-1) + `)`
		if _, err := d.c.db.ExecContext(qctx, q, seqs...); err != nil {
			// Unmarked callbacks are delivered again by the next term.
			d.c.dbError("mark callbacks delivered", err)
		}
		seqs = seqs[:0]
	}
	t := time.NewTicker(markEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case s := <-in:
					seqs = append(seqs, s)
				default:
					flush()
					return
				}
			}
		case s := <-in:
			seqs = append(seqs, s)
			if len(seqs) >= 1000 {
				flush()
			}
		case <-t.C:
			flush()
		}
	}
}
