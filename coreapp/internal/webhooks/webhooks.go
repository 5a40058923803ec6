// Package webhooks is the last stage: the dispatcher posts the shard's
// callbacks to the configured webhook (webhooks.url), only while this
// coreapp is the shard's primary, in order per recipient, and marks them
// delivered in MySQL. It loads what the events stage stored (callback_persist)
// and takes what it was handed in memory (Remember) otherwise.
//
// It depends on Deps: the database, the settings (the webhook, its CA and
// backoff), the claim (Status) and its metrics. Its input is Callback.
package webhooks

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

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
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

// Dispatcher posts the shard's callbacks to webhooks.url, only while this
// coreapp is the shard's primary. Recipients are spread over
// max_concurrent_requests lanes by hash; a lane posts its callbacks in seq
// order, one request at a time, and retries a request the webhook did not
// answer with 200 after the original's linear backoff. So callbacks of one
// recipient arrive in order, and at most max_concurrent_requests are in
// flight. Delivered callbacks are marked in MySQL; a new primary starts
// from the unmarked ones (at least once).
type Dispatcher struct {
	Deps
	wake chan struct{}
	mu   sync.Mutex
	mem  []*Callback // callbacks not persisted (callback_persist false)
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
func (d *Dispatcher) nextPost(st claim.Status) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if of := [2]int64{int64(st.Shard), st.Epoch}; d.postsOf != of {
		d.postsOf, d.posts = of, 0
	}
	d.posts++
	return d.posts
}

// New makes the dispatcher; Run starts it.
func New(d Deps) *Dispatcher {
	return &Dispatcher{Deps: d, wake: make(chan struct{}, 1), ca: newWebhookCA(d)}
}

// Nudge wakes the dispatcher: callbacks were stored, or the claim's
// status changed.
func (d *Dispatcher) Nudge() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Remember queues callbacks that are not persisted.
func (d *Dispatcher) Remember(cbs []*Callback) {
	d.mu.Lock()
	for _, cb := range cbs {
		d.next--
		cb.Seq = d.next
		d.mem = append(d.mem, cb)
	}
	if over := len(d.mem) - webhookQueue*5; over > 0 {
		d.Log.Warn("webhook unreachable and callback_persist is off: dropping the oldest callbacks", "dropped", over)
		d.mem = append([]*Callback(nil), d.mem[over:]...)
	}
	d.mu.Unlock()
	d.Nudge()
}

func (d *Dispatcher) takeMemory(shard int) []*Callback {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out, rest []*Callback
	for _, cb := range d.mem {
		if cb.Shard == shard {
			out = append(out, cb)
		} else {
			rest = append(rest, cb)
		}
	}
	d.mem = rest
	return out
}

// Run serves one term at a time: a term lasts while this coreapp is primary
// for one shard and epoch and the webhook settings stay the same.
func (d *Dispatcher) Run(ctx context.Context) {
	for {
		changed := d.Settings.Moved()
		st := d.Claim.Status()
		s := d.Settings.Get()
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
	q    []*Callback
	wake chan struct{}
}

func (d *Dispatcher) term(ctx context.Context, st claim.Status, hooks settings.Webhooks) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	d.Log.Info("delivering callbacks", "shard", st.Shard, "epoch", st.Epoch, "url", hooks.URL, "max_concurrent_requests", hooks.MaxConcurrentRequests)
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
			d.serveLane(ctx, client, hooks.URL, st, l, func(cbs []*Callback) {
				for _, cb := range cbs {
					if cb.Seq > 0 {
						select {
						case marks <- cb.Seq:
						case <-ctx.Done():
						}
					}
				}
				pmu.Lock()
				full := pending >= webhookQueue
				pending -= int64(len(cbs))
				pmu.Unlock()
				if full {
					d.Nudge() // room again: load the rest of the backlog now
				}
			})
		}()
	}
	var last int64
	for {
		changed := d.Settings.Moved()
		cur := d.Claim.Status()
		s := d.Settings.Get()
		if !cur.Primary || cur.Shard != st.Shard || cur.Epoch != st.Epoch || s.Webhooks.URL != hooks.URL ||
			s.Webhooks.MaxConcurrentRequests != hooks.MaxConcurrentRequests || d.caChanged(ctx, caKey) {
			d.Log.Info("stopped delivering callbacks", "shard", st.Shard, "epoch", st.Epoch)
			return
		}
		pmu.Lock()
		room := webhookQueue - pending
		pmu.Unlock()
		if room > 0 {
			cbs, err := d.load(ctx, st.Shard, last, room)
			if err != nil && ctx.Err() == nil {
				d.DBError("load callbacks", err)
			}
			cbs = append(cbs, d.takeMemory(st.Shard)...)
			pmu.Lock()
			pending += int64(len(cbs))
			pmu.Unlock()
			for _, cb := range cbs {
				if cb.Seq > last {
					last = cb.Seq
				}
				l := lanes[laneOf(cb.Recipient, len(lanes))]
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
func (d *Dispatcher) caChanged(ctx context.Context, key [32]byte) bool {
	_, now := d.ca.current(ctx)
	return now != key
}

func laneOf(recipient string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(recipient))
	return int(h.Sum32() % uint32(n))
}

func (d *Dispatcher) load(ctx context.Context, shard int, after, limit int64) ([]*Callback, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs, err := d.DB.QueryContext(qctx, `SELECT seq, recipient, kind, payload FROM callbacks
		WHERE shard_id = ? AND delivered = 0 AND seq > ? ORDER BY seq LIMIT ?`, shard, after, min(limit, 5000))
	if err != nil {
		return nil, fmt.Errorf("load callbacks of shard %d: %w", shard, err)
	}
	defer rs.Close()
	var out []*Callback
	for rs.Next() {
		cb := &Callback{Shard: shard}
		if err := rs.Scan(&cb.Seq, &cb.Recipient, &cb.Kind, &cb.Payload); err != nil {
			return out, err
		}
		out = append(out, cb)
	}
	return out, rs.Err()
}

// serveLane posts the lane's callbacks in order until ctx ends.
func (d *Dispatcher) serveLane(ctx context.Context, client *http.Client, url string, st claim.Status, l *lane, delivered func([]*Callback)) {
	attempts := 0
	for {
		l.mu.Lock()
		n := 0
		for n < len(l.q) && n < webhookBatch && l.q[n].Kind == l.q[0].Kind {
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
			wait := d.Settings.Get().CallbackBackoff(attempts)
			d.Metrics.WebhookFailures.Inc()
			d.Log.Warn("webhook did not take callbacks; retrying", "url", url, "callbacks", n, "attempt", attempts, "in", wait, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		attempts = 0
		l.mu.Lock()
		l.q = l.q[n:]
		l.mu.Unlock()
		d.Metrics.CallbacksDelivered.Add(float64(n))
		delivered(batch)
	}
}

// errNotHolder: the term's claim ended; its callbacks are the next holder's.
var errNotHolder = errors.New("no longer the shard's primary")

// post sends one batch of callbacks of one kind in the original's payload,
// with no envelope. Only a 200 counts as delivered, as in the original.
func (d *Dispatcher) post(ctx context.Context, client *http.Client, url string, st claim.Status, batch []*Callback) error {
	var b bytes.Buffer
	if batch[0].Kind == KindStatus {
		b.WriteString(`{"statuses":[`)
		for i, cb := range batch {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(cb.Payload)
		}
		b.WriteString(`]}`)
	} else {
		// Stored as {"contact":C,"message":M}; the payload is
		// {"contacts":[C...],"messages":[M...]}.
		var contacts, messages []string
		for _, cb := range batch {
			c, m := splitInbound(cb.Payload)
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
	if cur := d.Claim.Status(); !cur.Primary || cur.Shard != st.Shard || cur.Epoch != st.Epoch {
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
func (d *Dispatcher) mark(ctx context.Context, in <-chan int64) {
	var seqs []any
	flush := func() {
		if len(seqs) == 0 {
			return
		}
		qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q := `UPDATE callbacks SET delivered = 1, delivered_at = NOW(6) WHERE seq IN (?` + strings.Repeat(",?", len(seqs)-1) + `)`
		if _, err := d.DB.ExecContext(qctx, q, seqs...); err != nil {
			// Unmarked callbacks are delivered again by the next term.
			d.DBError("mark callbacks delivered", err)
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
