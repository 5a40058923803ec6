package delivery

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// fast is a Config whose waits suit a test.
func fast() Config {
	return Config{Unlimited: true, Node: "node-a", Concurrency: 1,
		RetryInitial: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		ThrottleInitial: 300 * time.Millisecond, ThrottleMax: time.Second,
		PairInitial: 300 * time.Millisecond, PairMax: time.Second,
		TokenRetry:  300 * time.Millisecond,
		UnknownWait: 300 * time.Millisecond, UnknownMaxWait: 900 * time.Millisecond}
}

func msgs(spec ...string) []Outgoing {
	var out []Outgoing
	for _, s := range spec { // "id>to"
		id, to, _ := strings.Cut(s, ">")
		out = append(out, Outgoing{ID: id, To: to, Body: []byte(`{}`)})
	}
	return out
}

func send(t *testing.T, e *Engine, ms []Outgoing) []Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := e.Send(ctx, ms)
	if len(res) != len(ms) {
		t.Fatalf("%d results for %d messages", len(res), len(ms))
	}
	for i := range ms {
		if res[i].ID != ms[i].ID {
			t.Fatalf("result %d is for %s, want %s", i, res[i].ID, ms[i].ID)
		}
	}
	return res
}

func outcomes(res []Result) string {
	var b []string
	for _, r := range res {
		b = append(b, r.ID+"="+[]string{"sent", "failed", "later"}[r.Outcome])
	}
	return strings.Join(b, " ")
}

func want(t *testing.T, res []Result, w string) {
	t.Helper()
	if got := outcomes(res); got != w {
		for _, r := range res {
			t.Logf("%s: %s", r.ID, r.Detail)
		}
		t.Fatalf("outcomes\n got %s\nwant %s", got, w)
	}
}

// postsOf is the order in which one recipient's messages were posted.
func postsOf(p *fakePoster, to string) string {
	var ids []string
	for _, x := range p.sent() {
		if x.To == to {
			ids = append(ids, x.ID)
		}
	}
	return strings.Join(ids, ",")
}

func TestSentOnceAndRecorded(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	e := NewEngine(fast(), p, s)
	ms := msgs("a1>1", "b1>2", "a2>1")
	res := send(t, e, ms)
	want(t, res, "a1=sent b1=sent a2=sent")
	if res[0].WAMID != "wamid.a1" {
		t.Fatalf("wamid %q", res[0].WAMID)
	}
	if r := s.rec("a1"); r.State != StateSent || r.Attempts != 1 || r.WAMID != "wamid.a1" || r.Node != "node-a" {
		t.Fatalf("record %+v", r)
	}
	// The same batch again (the coreapp lost Send's answer): nothing is
	// posted twice.
	want(t, send(t, e, ms), "a1=sent b1=sent a2=sent")
	if n := len(p.sent()); n != 3 {
		t.Fatalf("%d posts, want 3", n)
	}
}

// Permanent codes fail the message alone, with the Graph error; the
// recipient's later messages go on; a failed message is never posted again.
func TestPermanentCodes(t *testing.T) {
	for _, c := range []struct{ code, status int }{
		{graphapi.CodeInvalidParameter, 400},
		{graphapi.CodeRecipientNotValid, 400},
		{graphapi.CodeMessageUndelivered, 400},
		{graphapi.CodeReengagement, 400},
		{graphapi.CodeUnsupportedType, 400},
		{131999, 400}, // an unknown 4xx
		{0, 404},      // an answer that is not a Graph error
	} {
		t.Run(fmt.Sprint(c.code), func(t *testing.T) {
			p, s := newFakePoster(), newMemStore()
			p.script["a1"] = []error{gerr(c.code, c.status)}
			e := NewEngine(fast(), p, s)
			ms := msgs("a1>1", "a2>1", "b1>2")
			res := send(t, e, ms)
			want(t, res, "a1=failed a2=sent b1=sent")
			if res[0].Err == nil || res[0].Err.Code != c.code {
				t.Fatalf("error %+v", res[0].Err)
			}
			res = send(t, e, ms)
			want(t, res, "a1=failed a2=sent b1=sent")
			if res[0].Err == nil || res[0].Err.Code != c.code || res[0].Err.HTTPStatus != c.status {
				t.Fatalf("stored error %+v", res[0].Err)
			}
			if n := p.count("a1"); n != 1 {
				t.Fatalf("a1 posted %d times", n)
			}
		})
	}
}

// Retryable codes are posted again with backoff within the Send.
func TestRetryCodes(t *testing.T) {
	for _, c := range []struct{ code, status int }{
		{graphapi.CodeUnknown, 500}, {graphapi.CodeService, 503},
		{graphapi.CodeSomethingWrong, 500}, {0, 502}, {131999, 503},
	} {
		t.Run(fmt.Sprintf("%d_%d", c.code, c.status), func(t *testing.T) {
			p, s := newFakePoster(), newMemStore()
			p.script["a1"] = []error{gerr(c.code, c.status), gerr(c.code, c.status), nil}
			e := NewEngine(fast(), p, s)
			want(t, send(t, e, msgs("a1>1", "a2>1")), "a1=sent a2=sent")
			if n := p.count("a1"); n != 3 {
				t.Fatalf("a1 posted %d times, want 3", n)
			}
			if r := s.rec("a1"); r.Attempts != 3 || r.State != StateSent {
				t.Fatalf("record %+v", r)
			}
			if got := postsOf(p, "1"); got != "a1,a1,a1,a2" {
				t.Fatalf("posts %s", got)
			}
		})
	}
}

// Retries are bounded: then the message and the recipient's later ones
// are Later, others go on, and the next Send after the backoff keeps order.
func TestRetryBoundedThenLater(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	e500 := gerr(graphapi.CodeSomethingWrong, 500)
	p.script["a1"] = []error{e500, e500, e500, nil}
	cfg := fast()
	cfg.RetryInitial, cfg.RetryMax = 100*time.Millisecond, 100*time.Millisecond
	e := NewEngine(cfg, p, s)
	ms := msgs("a1>1", "b1>2", "a2>1", "b2>2")
	want(t, send(t, e, ms), "a1=later b1=sent a2=later b2=sent")
	if n := p.count("a1"); n != DefaultRetries {
		t.Fatalf("a1 posted %d times, want %d", n, DefaultRetries)
	}
	if r := s.rec("a1"); r.State != StatePending {
		t.Fatalf("record %+v", r)
	}
	// At once: the recipient is held, nothing posted.
	want(t, send(t, e, msgs("a1>1", "a2>1")), "a1=later a2=later")
	if n := p.count("a1"); n != DefaultRetries {
		t.Fatalf("a1 posted during its backoff")
	}
	time.Sleep(200 * time.Millisecond)
	want(t, send(t, e, msgs("a1>1", "a2>1")), "a1=sent a2=sent")
	if got := postsOf(p, "1"); got != "a1,a1,a1,a1,a2" {
		t.Fatalf("posts of recipient 1: %s", got)
	}
}

// 130429, 80007 and 4 stop the whole number: the rest of the batch is
// Later, nothing more is posted until the backoff ends.
func TestThrottleCodes(t *testing.T) {
	for _, code := range []int{graphapi.CodeThroughput, graphapi.CodeRateLimitHit, graphapi.CodeTooManyCalls} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			p, s := newFakePoster(), newMemStore()
			p.script["b1"] = []error{gerr(code, 429), nil}
			e := NewEngine(fast(), p, s)
			// Concurrency 1: recipient 1's messages go first, then 2's.
			ms := msgs("a1>1", "b1>2", "c1>3", "b2>2")
			want(t, send(t, e, ms), "a1=sent b1=later c1=later b2=later")
			if got := len(p.sent()); got != 2 {
				t.Fatalf("%d posts, want 2 (a1, b1)", got)
			}
			nb := e.NotBefore()
			if nb.IsZero() {
				t.Fatal("no pause after a throttle")
			}
			// A Send with too short a deadline returns at once, Later.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			res := e.Send(ctx, ms[1:])
			cancel()
			want(t, res, "b1=later c1=later b2=later")
			if got := len(p.sent()); got != 2 {
				t.Fatalf("%d posts during the pause", got-2)
			}
			// A Send whose deadline covers the pause waits it out.
			res = send(t, e, ms[1:])
			want(t, res, "b1=sent c1=sent b2=sent")
			if time.Now().Before(nb) {
				t.Fatalf("sent before the pause ended")
			}
			if got := postsOf(p, "2"); got != "b1,b1,b2" {
				t.Fatalf("posts of recipient 2: %s", got)
			}
		})
	}
}

// Throttle backoff grows (exponential with jitter) while 130429 repeats.
func TestThrottleBackoffGrows(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	th := gerr(graphapi.CodeThroughput, 429)
	p.script["a1"] = []error{th, th, th, nil}
	cfg := fast()
	cfg.ThrottleInitial, cfg.ThrottleMax = 100*time.Millisecond, 2*time.Second
	e := NewEngine(cfg, p, s)
	var pauses []time.Duration
	for i := 0; i < 3; i++ {
		want(t, send(t, e, msgs("a1>1")), "a1=later")
		pauses = append(pauses, time.Until(e.NotBefore()))
	}
	// Jitter is ±50%: the third pause (400 ms ± 200) exceeds the first
	// (100 ms ± 50).
	if pauses[2] <= pauses[0] {
		t.Fatalf("pauses %v do not grow", pauses)
	}
	want(t, send(t, e, msgs("a1>1")), "a1=sent")
}

// A burst of requests in flight together that all get 130429 pauses the
// number once, at the initial backoff, not once per answer.
func TestThrottleBurstCountsOnce(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	p.latency = 20 * time.Millisecond // all eight in flight at once
	p.all = []error{gerr(graphapi.CodeThroughput, 429)}
	cfg := fast()
	cfg.Concurrency = 8
	cfg.ThrottleInitial, cfg.ThrottleMax = 200*time.Millisecond, 10*time.Second
	e := NewEngine(cfg, p, s)
	want(t, send(t, e, msgs("a>1", "b>2", "c>3", "d>4", "e>5", "f>6", "g>7", "h>8")),
		"a=later b=later c=later d=later e=later f=later g=later h=later")
	if n := len(p.sent()); n < 2 {
		t.Fatalf("%d requests in flight, want several", n)
	}
	// Initial 200 ms with ±50 % jitter: at most 300 ms.
	if d := time.Until(e.NotBefore()); d > 300*time.Millisecond {
		t.Fatalf("paused %v after one burst", d)
	}
}

// 131056 delays only that recipient, keeping its order; others go on.
func TestPairLimit(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	p.script["a2"] = []error{gerr(graphapi.CodePairRate, 400), nil}
	cfg := fast()
	cfg.Concurrency = 4
	e := NewEngine(cfg, p, s)
	ms := msgs("a1>1", "b1>2", "a2>1", "b2>2", "a3>1", "c1>3")
	want(t, send(t, e, ms), "a1=sent b1=sent a2=later b2=sent a3=later c1=sent")
	// Held: the next Send at once posts nothing for recipient 1.
	want(t, send(t, e, msgs("a2>1", "a3>1", "b3>2")), "a2=later a3=later b3=sent")
	time.Sleep(500 * time.Millisecond)
	want(t, send(t, e, msgs("a2>1", "a3>1")), "a2=sent a3=sent")
	if got := postsOf(p, "1"); got != "a1,a2,a2,a3" {
		t.Fatalf("posts of recipient 1: %s", got)
	}
}

// 190 stops every send and shows in TokenError; the token is tried again
// only every TokenRetry, with one request.
func TestTokenInvalid(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	tok := gerr(graphapi.CodeAccessToken, 401)
	tok.Message = "Error validating access token: Session has expired"
	p.all = []error{tok, tok, tok, tok, nil}
	cfg := fast()
	cfg.Concurrency = 8
	e := NewEngine(cfg, p, s)
	ms := msgs("a1>1", "b1>2", "c1>3")
	// Concurrency 8: b1 and c1 may have left before a1's answer; all get
	// 190 and the number stops.
	want(t, send(t, e, ms), "a1=later b1=later c1=later")
	if !strings.Contains(e.TokenError(), "Session has expired") {
		t.Fatalf("token error %q", e.TokenError())
	}
	before := len(p.sent())
	p.mu.Lock()
	p.all = []error{tok, nil} // one more 190, then success
	p.mu.Unlock()
	want(t, send(t, e, msgs("a1>1", "b1>2")), "a1=later b1=later")
	if len(p.sent()) != before {
		t.Fatal("posted while the token is stopped")
	}
	time.Sleep(350 * time.Millisecond)
	// The try: one request (a1 gets 190 again), nothing else posted.
	want(t, send(t, e, msgs("a1>1", "b1>2", "c1>3")), "a1=later b1=later c1=later")
	if got := len(p.sent()); got != before+1 {
		t.Fatalf("the token try made %d requests, want 1", got-before)
	}
	if e.TokenError() == "" {
		t.Fatal("token error cleared by a failed try")
	}
	time.Sleep(350 * time.Millisecond)
	want(t, send(t, e, msgs("a1>1", "b1>2", "c1>3")), "a1=sent b1=sent c1=sent")
	if e.TokenError() != "" {
		t.Fatalf("token error %q after a success", e.TokenError())
	}
}

// A request that gets no answer is not resent at once; the recipient's
// later messages wait behind it.
func TestUnknownOutcome(t *testing.T) {
	cases := []struct {
		policy Policy
		status bool          // a status webhook names it in time
		after  time.Duration // when the test looks again
		want   string        // outcome of u1 then
		posts  int           // how often u1 was posted in all
	}{
		{PolicyResend, true, 100 * time.Millisecond, "sent", 1},
		{PolicyFail, true, 100 * time.Millisecond, "sent", 1},
		{PolicyWait, true, 100 * time.Millisecond, "sent", 1},
		{PolicyResend, false, 400 * time.Millisecond, "sent", 2},
		{PolicyFail, false, 400 * time.Millisecond, "failed", 1},
		{PolicyWait, false, 400 * time.Millisecond, "later", 1},
		{PolicyWait, false, 1000 * time.Millisecond, "failed", 1},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s_status%v_%s", c.policy, c.status, c.after), func(t *testing.T) {
			p, s := newFakePoster(), newMemStore()
			p.script["u1"] = []error{errUnknown, nil}
			cfg := fast()
			cfg.Policy = c.policy
			e := NewEngine(cfg, p, s)
			ms := msgs("u1>1", "u2>1", "v1>2")
			want(t, send(t, e, ms), "u1=later u2=later v1=sent")
			if r := s.rec("u1"); r.State != StateUnknown || r.Attempts != 1 {
				t.Fatalf("record %+v", r)
			}
			// Within UnknownWait: no resend, order kept.
			want(t, send(t, e, ms[:2]), "u1=later u2=later")
			if c.status {
				s.setStatus("u1", "delivered")
			}
			time.Sleep(c.after)
			res := send(t, e, ms[:2])
			w := "u1=" + c.want + " u2="
			if c.want == "later" {
				w += "later"
			} else {
				w += "sent"
			}
			want(t, res, w)
			if c.want == "sent" && res[0].WAMID != "wamid.u1" {
				t.Fatalf("wamid %q", res[0].WAMID)
			}
			if c.want == "failed" {
				if res[0].Err == nil || res[0].Err.Code != CodeOutcomeUnknown || !strings.Contains(res[0].Err.Message, string(c.policy)) {
					t.Fatalf("error %+v", res[0].Err)
				}
			}
			if n := p.count("u1"); n != c.posts {
				t.Fatalf("u1 posted %d times, want %d", n, c.posts)
			}
			if got := postsOf(p, "1"); c.want != "later" && !strings.HasSuffix(got, "u1,u2") && got != "u1,u2" {
				t.Fatalf("posts of recipient 1: %s", got)
			}
		})
	}
}

// A coreapp that died during a request left its record "sending": a new
// primary (a new Engine on the same Store) does not resend it blindly.
func TestFailoverKeepsUnknown(t *testing.T) {
	s := newMemStore()
	m := msgs("f1>1")[0]
	if err := s.Begin(context.Background(), m, "old-node", time.Now()); err != nil {
		t.Fatal(err)
	}
	p := newFakePoster()
	cfg := fast()
	cfg.Policy = PolicyFail
	e := NewEngine(cfg, p, s)
	want(t, send(t, e, []Outgoing{m}), "f1=later")
	s.setStatus("f1", "sent")
	want(t, send(t, e, []Outgoing{m}), "f1=sent")
	if len(p.sent()) != 0 {
		t.Fatal("the new primary posted a message of unknown outcome")
	}
}

// A Poster that refuses before sending (the claim's deadline passed)
// leaves the message Later and safe to send (pending, not unknown).
func TestRefusedBeforeSending(t *testing.T) {
	p, s := newFakePoster(), newMemStore()
	p.script["a1"] = []error{fmt.Errorf("claim deadline passed"), nil}
	e := NewEngine(fast(), p, s)
	want(t, send(t, e, msgs("a1>1", "a2>1")), "a1=later a2=later")
	if r := s.rec("a1"); r.State != StatePending {
		t.Fatalf("record %+v", r)
	}
	want(t, send(t, e, msgs("a1>1", "a2>1")), "a1=sent a2=sent")
}

func TestShareAddsUpToLimit(t *testing.T) {
	for _, limit := range []int{1, 80, 81, 1000} {
		for _, shards := range []int{1, 2, 3, 4, 8, 64} {
			if limit < shards {
				continue
			}
			var sum float64
			for i := 0; i < shards; i++ {
				sum += float64(Share(limit, i, shards))
			}
			if int(sum) != limit {
				t.Fatalf("limit %d over %d shards: shares add to %v", limit, shards, sum)
			}
		}
	}
}

// The number's limit holds across shards: three engines (three shards'
// coreapps) at 60 messages/s in all, measured at the Poster, never
// exceed 60 in any one-second window.
func TestThroughputWindow(t *testing.T) {
	const limit, shards, per = 60, 3, 70
	p := newFakePoster()
	p.latency = 2 * time.Millisecond
	var wg sync.WaitGroup
	start := time.Now()
	for sh := 0; sh < shards; sh++ {
		cfg := fast()
		cfg.Unlimited, cfg.Throughput, cfg.Shard, cfg.Shards, cfg.Concurrency = false, limit, sh, shards, 8
		e := NewEngine(cfg, p, newMemStore())
		if got := float64(e.Limit()); got != 20 {
			t.Fatalf("shard %d budget %v, want 20", sh, got)
		}
		var ms []Outgoing
		for i := 0; i < per; i++ {
			ms = append(ms, Outgoing{ID: fmt.Sprintf("s%d-%d", sh, i), To: fmt.Sprintf("%d%03d", sh, i)})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, r := range e.Send(ctx, ms) {
				if r.Outcome != Sent {
					t.Errorf("%s: %v %s", r.ID, r.Outcome, r.Detail)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	ps := p.sent()
	if len(ps) != shards*per {
		t.Fatalf("%d posts", len(ps))
	}
	worst := maxInWindow(ps, time.Second)
	t.Logf("%d messages in %v (%.1f/s), at most %d in any 1-second window (limit %d)", len(ps), took.Round(time.Millisecond), float64(len(ps))/took.Seconds(), worst, limit)
	if worst > limit {
		t.Fatalf("%d posts within one second, limit %d", worst, limit)
	}
	// The budget is also used: 210 messages at 60/s take about 3.5 s.
	if took > 5*time.Second {
		t.Fatalf("took %v: the budget is not used", took)
	}
}

// maxInWindow is the most posts within any half-open window [t, t+w).
func maxInWindow(ps []post, w time.Duration) int {
	ts := make([]time.Time, len(ps))
	for i, p := range ps {
		ts[i] = p.At
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= w {
			j++
		}
		if i-j+1 > best {
			best = i - j + 1
		}
	}
	return best
}

func TestConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := ConfigFromEnv(env(nil))
	if err != nil || c.withDefaults().Throughput != DefaultThroughput || c.withDefaults().Policy != DefaultPolicy {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = ConfigFromEnv(env(map[string]string{"MC_CLOUDAPI_THROUGHPUT": "0", "MC_CLOUDAPI_UNKNOWN_OUTCOME": "wait",
		"MC_CLOUDAPI_UNKNOWN_WAIT": "5s", "MC_CLOUDAPI_UNKNOWN_MAX_WAIT": "2m", "MC_CLOUDAPI_TOKEN_RETRY": "1m"}))
	if err != nil || !c.Unlimited || c.Policy != PolicyWait || c.UnknownWait != 5*time.Second || c.UnknownMaxWait != 2*time.Minute || c.TokenRetry != time.Minute {
		t.Fatalf("set: %+v, %v", c, err)
	}
	if e := NewEngine(c, newFakePoster(), newMemStore()); e.Limit() < 1e9 {
		t.Fatalf("unlimited engine has limit %v", e.Limit())
	}
	for k, v := range map[string]string{"MC_CLOUDAPI_THROUGHPUT": "1001", "MC_CLOUDAPI_UNKNOWN_OUTCOME": "maybe", "MC_CLOUDAPI_UNKNOWN_WAIT": "soon"} {
		if _, err := ConfigFromEnv(env(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Fatalf("%s=%s: %v", k, v, err)
		}
	}
}

// brokenStore fails what the test says (MySQL down).
type brokenStore struct {
	*memStore
	load, begin error
}

func (s brokenStore) Load(ctx context.Context, ids []string) (map[string]Record, error) {
	if s.load != nil {
		return nil, s.load
	}
	return s.memStore.Load(ctx, ids)
}

func (s brokenStore) Begin(ctx context.Context, m Outgoing, node string, at time.Time) error {
	if s.begin != nil {
		return s.begin
	}
	return s.memStore.Begin(ctx, m, node, at)
}

// Without its records the engine posts nothing: an attempt it could not
// record, or a message whose record it could not read, might be sent twice.
func TestStoreDownPostsNothing(t *testing.T) {
	for name, s := range map[string]brokenStore{
		"load":  {memStore: newMemStore(), load: fmt.Errorf("connection refused")},
		"begin": {memStore: newMemStore(), begin: fmt.Errorf("connection refused")},
	} {
		t.Run(name, func(t *testing.T) {
			p := newFakePoster()
			e := NewEngine(fast(), p, s)
			res := send(t, e, msgs("a1>1", "a2>1", "b1>2"))
			want(t, res, "a1=later a2=later b1=later")
			if !strings.Contains(res[0].Detail, "connection refused") {
				t.Fatalf("detail %q", res[0].Detail)
			}
			if n := len(p.sent()); n != 0 {
				t.Fatalf("%d posts without records", n)
			}
		})
	}
}

func TestConcurrencyFollowsThroughput(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want int
	}{
		{Config{}, 40}, // 80/s
		{Config{Throughput: 20}, 16},
		{Config{Throughput: 1000}, 500},
		{Config{Unlimited: true}, 64},
		{Config{Throughput: 1000, Concurrency: 8}, 8},
	} {
		if got := c.cfg.withDefaults().Concurrency; got != c.want {
			t.Errorf("%+v: concurrency %d, want %d", c.cfg, got, c.want)
		}
	}
}

// slowBegin is a store whose first attempt records take long to commit
// (MySQL's group commit under load returns records after varying waits).
type slowBegin struct {
	*memStore
	calls atomic.Int64
	slow  int64
	delay time.Duration
}

func (s *slowBegin) Begin(ctx context.Context, m Outgoing, node string, at time.Time) error {
	if s.calls.Add(1) <= s.slow {
		time.Sleep(s.delay)
	}
	return s.memStore.Begin(ctx, m, node, at)
}

// The share holds where the requests leave, not where the budget is
// taken: the first 5 attempts' records take 900 ms, so those requests
// leave at the end of the second in which the next ones go. Spaced only
// at the bucket, about 45 requests then reached the network in one
// second at a share of 40 (found by BenchmarkCloudAPIThroughput: 86 in
// one second at a limit of 80, with MySQL's group commit in the way).
func TestThroughputWindowSlowRecords(t *testing.T) {
	const share, n = 40, 130
	p := newFakePoster()
	cfg := fast()
	cfg.Unlimited, cfg.Throughput, cfg.Shard, cfg.Shards, cfg.Concurrency = false, share, 0, 1, 16
	s := &slowBegin{memStore: newMemStore(), slow: 5, delay: 900 * time.Millisecond}
	e := NewEngine(cfg, p, s)
	var ms []Outgoing
	for i := 0; i < n; i++ {
		ms = append(ms, Outgoing{ID: fmt.Sprintf("m%d", i), To: fmt.Sprintf("1555%04d", i)})
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range e.Send(ctx, ms) {
		if r.Outcome != Sent {
			t.Errorf("%s: %v %s", r.ID, r.Outcome, r.Detail)
		}
	}
	took := time.Since(start)
	worst := maxInWindow(p.sent(), time.Second)
	t.Logf("%d messages in %v (%.1f/s), at most %d in any 1-second window (share %d)", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), worst, share)
	if worst > share {
		t.Fatalf("%d posts within one second, share %d", worst, share)
	}
	if took > 5*time.Second {
		t.Fatalf("took %v: the budget is not used", took)
	}
}

// Time lost (an idle engine, a late wake-up) is made up at twice the
// share, not in one burst: a burst let go at once on a busy machine
// leaves as each goroutine gets to run, into the next second. 40
// messages from idle at a share of 40 take about half a second, never
// two requests closer than half of 1/share.
func TestCatchUpAtTwiceTheShare(t *testing.T) {
	const share = 40
	p := newFakePoster()
	cfg := fast()
	cfg.Unlimited, cfg.Throughput, cfg.Shard, cfg.Shards, cfg.Concurrency = false, share, 0, 1, 40
	e := NewEngine(cfg, p, newMemStore())
	var ms []Outgoing
	for i := 0; i < share; i++ {
		ms = append(ms, Outgoing{ID: fmt.Sprintf("m%d", i), To: fmt.Sprintf("1555%04d", i)})
	}
	// An engine idle for over a second: its bucket is full (burst one
	// share) and no request left within the window.
	want(t, send(t, e, msgs("w>1")), "w=sent")
	time.Sleep(1100 * time.Millisecond)
	for _, r := range send(t, e, ms) {
		if r.Outcome != Sent {
			t.Fatalf("%s: %v %s", r.ID, r.Outcome, r.Detail)
		}
	}
	ps := p.sent()[1:]
	sort.Slice(ps, func(i, j int) bool { return ps[i].At.Before(ps[j].At) })
	half := time.Duration(float64(time.Second) / share / 2)
	for i := 1; i < len(ps); i++ {
		// The decision is spaced; the fake stamps on arrival, a little later.
		if gap := ps[i].At.Sub(ps[i-1].At); gap < half*8/10 {
			t.Fatalf("posts %d and %d %v apart, want about %v or more", i-1, i, gap, half)
		}
	}
	if span := ps[len(ps)-1].At.Sub(ps[0].At); span < time.Duration(share-1)*half*9/10 {
		t.Fatalf("%d posts within %v: a burst", len(ps), span)
	}
}
