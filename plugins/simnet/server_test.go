package simnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

const testKeepalive = 150 * time.Millisecond

// testServer starts a network on a free port and returns it with its
// plugin address. setup, if not nil, runs before the server accepts.
func testServer(t *testing.T, cfg Config, setup func(*Server)) (*Server, string) {
	t.Helper()
	if cfg.Keepalive == 0 {
		cfg.Keepalive = testKeepalive
	}
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := NewServer(cfg)
	if setup != nil {
		setup(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := s.Serve(ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s, ln.Addr().String()
}

// testWriter sends logs to t.Log, so they show only for failing tests.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// client is a test connection that collects pushed events.
type client struct {
	*Conn
	events chan Event
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	events := make(chan Event, 1000)
	c, err := Dial(context.Background(), addr, func(e Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Abort)
	return &client{Conn: c, events: events}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect dials and attaches, failing the test on refusal.
func connect(t *testing.T, addr string, shard int, epoch uint64, node string) *client {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Connect(ctxT(t), shard, epoch, node); err != nil {
		t.Fatalf("connect shard %d epoch %d: %v", shard, epoch, err)
	}
	return c
}

// requireRefused attaches and expects a refusal containing want.
func requireRefused(t *testing.T, addr string, shard int, epoch uint64, want string) {
	t.Helper()
	c := dial(t, addr)
	_, err := c.Connect(ctxT(t), shard, epoch, "refused")
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("connect shard %d epoch %d: got %v, want a refusal", shard, epoch, err)
	}
	if !errors.Is(err, transport.ErrRefused) {
		t.Errorf("refusal %v does not match transport.ErrRefused", err)
	}
	if !strings.Contains(re.Reason, want) {
		t.Errorf("refusal reason %q does not mention %q", re.Reason, want)
	}
}

// keepPinging pings c every keepalive/4 until the test ends.
func keepPinging(t *testing.T, c *client) {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		tick := time.NewTicker(testKeepalive / 4)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-c.Done():
				return
			case <-tick.C:
				_ = c.Ping()
			}
		}
	}()
}

func waitDone(t *testing.T, c *client, within time.Duration) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(within):
		t.Fatalf("connection still alive after %v", within)
	}
}

func interval(t *testing.T, s *Server, id int64) Interval {
	t.Helper()
	for _, iv := range s.Connections() {
		if iv.ID == id {
			return iv
		}
	}
	t.Fatalf("no interval %d in %+v", id, s.Connections())
	return Interval{}
}

// eventually polls f until it returns nil or within passes.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStaleEpochRefused(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	a := connect(t, addr, 1, 5, "a")
	if err := a.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	requireRefused(t, addr, 1, 4, "older")
	// Other shards keep their own epochs.
	connect(t, addr, 2, 1, "b")
	if got := s.Shards()[0]; got.Shard != 1 || got.NewestEpoch != 5 || got.Open != nil {
		t.Errorf("shard 1 state = %+v, want newest epoch 5 and nothing open", got)
	}
	if n := len(s.Connections()); n != 2 {
		t.Errorf("%d intervals recorded, want 2 (refusals are not connections)", n)
	}
}

func TestSameEpochRefusedWhileOpen(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	a := connect(t, addr, 3, 7, "a")
	keepPinging(t, a)
	requireRefused(t, addr, 3, 7, "already connected")
	time.Sleep(testKeepalive) // a stays open across a keepalive thanks to its pings
	requireRefused(t, addr, 3, 7, "already connected")
	if iv := s.Connections()[0]; !iv.Open || iv.Node != "a" {
		t.Errorf("a's interval = %+v, want open", iv)
	}
	if v := s.Violations(); v.Count != 0 {
		t.Errorf("violations = %+v, want none", v)
	}
}

func TestReconnectSameEpochAfterClose(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	a := connect(t, addr, 0, 2, "a")
	if err := a.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	b := connect(t, addr, 0, 2, "a") // the same node after a plugin restart
	// A connection that just vanishes (plugin killed) frees the epoch as
	// soon as the network sees the socket close.
	b.Abort()
	eventually(t, time.Second, func() error {
		if _, err := dial(t, addr).Connect(ctxT(t), 0, 2, "a"); err != nil {
			return err
		}
		return nil
	})
	ivs := s.Connections()
	if len(ivs) != 3 {
		t.Fatalf("intervals = %+v, want 3", ivs)
	}
	if ivs[0].EndReason != EndClosed || ivs[1].EndReason != EndEOF || !ivs[2].Open {
		t.Errorf("end reasons = %q, %q, open=%v; want closed, eof, open", ivs[0].EndReason, ivs[1].EndReason, ivs[2].Open)
	}
	if v := s.Violations(); v.Count != 0 {
		t.Errorf("violations = %+v, want none", v)
	}
}

func TestKeepaliveDrop(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	silent := connect(t, addr, 1, 1, "silent")
	alive := connect(t, addr, 2, 1, "alive")
	keepPinging(t, alive)

	waitDone(t, silent, 4*testKeepalive)
	var ce *ClosedError
	if err := silent.Err(); !errors.As(err, &ce) || ce.Reason != EndKeepalive {
		t.Errorf("silent connection ended with %v, want closed by the network: keepalive", err)
	}
	iv := interval(t, s, 1)
	if iv.Open || iv.EndReason != EndKeepalive {
		t.Errorf("interval = %+v, want ended by keepalive", iv)
	}
	if got := time.Duration(iv.End - iv.LastFrame); got != testKeepalive {
		t.Errorf("dropped %v after the last frame, want exactly the keepalive %v", got, testKeepalive)
	}
	time.Sleep(2 * testKeepalive)
	if iv := interval(t, s, 2); !iv.Open {
		t.Errorf("pinging connection = %+v, want still open", iv)
	}
}

func TestFrameAfterSilenceNotProcessed(t *testing.T) {
	// The reader's own read deadline comes late here, as it might on a
	// loaded host; the frame must still be judged by when it arrived.
	s, addr := testServer(t, Config{}, func(s *Server) { s.readSlack = 10 * testKeepalive })
	c := connect(t, addr, 1, 1, "late")
	time.Sleep(2 * testKeepalive)
	_, err := c.Send(ctxT(t), []Message{{ID: "late-1", To: "x"}})
	if err == nil {
		t.Fatal("a send after the keepalive ran out was answered")
	}
	if msgs := s.Messages(MessageFilter{}); len(msgs) != 0 {
		t.Errorf("messages = %+v, want none", msgs)
	}
	iv := interval(t, s, 1)
	if iv.EndReason != EndKeepalive || time.Duration(iv.End-iv.LastFrame) != testKeepalive {
		t.Errorf("interval = %+v, want ended by keepalive one keepalive after its last frame", iv)
	}
}

func TestSupersedeWithOverlapIsOneViolation(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	a := connect(t, addr, 4, 1, "a")
	keepPinging(t, a)
	connect(t, addr, 4, 2, "b")

	waitDone(t, a, time.Second)
	var ce *ClosedError
	if err := a.Err(); !errors.As(err, &ce) || !strings.HasPrefix(ce.Reason, EndSuperseded) {
		t.Errorf("old connection ended with %v, want superseded", a.Err())
	}
	v := s.Violations()
	if v.Count != 1 || len(v.Overlaps) != 1 {
		t.Fatalf("violations = %+v, want exactly one", v)
	}
	o := v.Overlaps[0]
	if o.Shard != 4 || o.First.Node != "a" || o.Second.Node != "b" || o.First.EndReason != EndSuperseded {
		t.Errorf("overlap = %+v, want a (superseded) then b on shard 4", o)
	}
	if o.First.End <= o.Second.Start {
		t.Errorf("old interval ends at %d, not after the new one starts at %d", o.First.End, o.Second.Start)
	}
	if sh := s.Shards()[0]; sh.Open == nil || sh.Open.Node != "b" || sh.NewestEpoch != 2 {
		t.Errorf("shard = %+v, want b open at epoch 2", sh)
	}
	requireRefused(t, addr, 4, 1, "older")
	if n := s.Violations().Count; n != 1 {
		t.Errorf("violations after a refused stale connect = %d, want still 1", n)
	}
}

func TestSilentThenSupersededIsNotViolation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		slack     time.Duration // delays the reader's own drop
		nextEpoch uint64
	}{
		// The reader has not dropped the silent connection yet when the
		// next one arrives: the connect itself must see the silence.
		{"connect-time check, newer epoch", time.Hour, 2},
		{"connect-time check, same epoch", time.Hour, 1},
		// The reader dropped it first.
		{"read deadline, newer epoch", 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, addr := testServer(t, Config{}, func(s *Server) { s.readSlack = tc.slack })
			connect(t, addr, 5, 1, "old")
			time.Sleep(testKeepalive + testKeepalive/2)
			connect(t, addr, 5, tc.nextEpoch, "new")

			if v := s.Violations(); v.Count != 0 {
				t.Errorf("violations = %+v, want none", v)
			}
			old, cur := interval(t, s, 1), interval(t, s, 2)
			if old.Open || old.EndReason != EndKeepalive {
				t.Errorf("old interval = %+v, want dropped by keepalive", old)
			}
			if got := time.Duration(old.End - old.LastFrame); got != testKeepalive {
				t.Errorf("old interval ends %v after its last frame, want %v", got, testKeepalive)
			}
			if old.End >= cur.Start || !cur.Open {
				t.Errorf("old ends at %d, new starts at %d (open=%v): want old to end first", old.End, cur.Start, cur.Open)
			}
		})
	}
}

func TestSendDedupeAndOrder(t *testing.T) {
	s, addr := testServer(t, Config{StatusDelay: time.Hour}, nil)
	a := connect(t, addr, 1, 3, "a")
	b := connect(t, addr, 2, 1, "b")
	ctx := ctxT(t)

	res, err := a.Send(ctx, []Message{
		{ID: "m1", To: "alice", Body: json.RawMessage(`{"text":"one"}`)},
		{ID: "m2", To: "bob"},
		{ID: "m3", To: "alice"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ResultAccepted, ResultAccepted, ResultAccepted}
	requireResults(t, res, []string{"m1", "m2", "m3"}, want)

	if res, err = b.Send(ctx, []Message{{ID: "m4", To: "carol"}}); err != nil {
		t.Fatal(err)
	}
	requireResults(t, res, []string{"m4"}, []string{ResultAccepted})

	res, err = a.Send(ctx, []Message{{ID: "m2", To: "bob"}, {ID: "m5", To: "alice"}, {ID: "m5", To: "alice"}, {ID: "", To: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	requireResults(t, res, []string{"m2", "m5", "m5", ""}, []string{ResultDuplicate, ResultAccepted, ResultDuplicate, ResultError})
	if n := s.DuplicateCount(); n != 2 {
		t.Errorf("DuplicateCount = %d after m2 and m5 were sent again, want 2", n)
	}

	requireIDs(t, s.Messages(MessageFilter{}), "m1", "m2", "m3", "m4", "m5")
	one := 1
	msgs := s.Messages(MessageFilter{Shard: &one})
	requireIDs(t, msgs, "m1", "m2", "m3", "m5")
	requireIDs(t, s.Messages(MessageFilter{To: "alice"}), "m1", "m3", "m5")
	for _, m := range msgs {
		if m.Shard != 1 || m.Epoch != 3 || m.ConnID != 1 || m.Node != "a" {
			t.Errorf("message %s recorded as %+v, want shard 1 epoch 3 conn 1 node a", m.ID, m)
		}
	}
	if got := string(msgs[0].Body); got != `{"text":"one"}` {
		t.Errorf("m1 body = %s", got)
	}
}

func requireResults(t *testing.T, res []Result, ids, statuses []string) {
	t.Helper()
	if len(res) != len(ids) {
		t.Fatalf("results = %+v, want %d", res, len(ids))
	}
	for i := range res {
		if res[i].ID != ids[i] || res[i].Status != statuses[i] {
			t.Errorf("result %d = %+v, want %s %s", i, res[i], ids[i], statuses[i])
		}
	}
}

func requireIDs(t *testing.T, msgs []Received, ids ...string) {
	t.Helper()
	var got []string
	for i, m := range msgs {
		got = append(got, m.ID)
		if i > 0 && m.Seq <= msgs[i-1].Seq {
			t.Errorf("message %s has seq %d after %d", m.ID, m.Seq, msgs[i-1].Seq)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("messages = %v, want %v", got, ids)
	}
}

func TestSendOnlyFromOpenConnection(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	unattached := dial(t, addr)
	if _, err := unattached.Send(ctxT(t), []Message{{ID: "x1"}}); err == nil || !strings.Contains(err.Error(), "not connected") {
		t.Errorf("send before connect: %v, want not connected", err)
	}
	old := connect(t, addr, 1, 1, "old")
	connect(t, addr, 1, 2, "new")
	waitDone(t, old, time.Second)
	if _, err := old.Send(ctxT(t), []Message{{ID: "x2"}}); err == nil {
		t.Error("a superseded connection could send")
	}
	if msgs := s.Messages(MessageFilter{}); len(msgs) != 0 {
		t.Errorf("messages = %+v, want none", msgs)
	}
}

func TestStatusesEmitted(t *testing.T) {
	_, addr := testServer(t, Config{StatusDelay: 5 * time.Millisecond}, nil)
	c := connect(t, addr, 1, 1, "a")
	keepPinging(t, c)
	if _, err := c.Send(ctxT(t), []Message{{ID: "m1", To: "alice"}, {ID: "m2", To: "bob"}}); err != nil {
		t.Fatal(err)
	}
	// A duplicate gets no second set of statuses.
	if _, err := c.Send(ctxT(t), []Message{{ID: "m1", To: "alice"}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"m1 sent alice", "m2 sent bob", "m1 delivered alice", "m2 delivered bob", "m1 read alice", "m2 read bob"}
	requireEvents(t, c, want)
	select {
	case e := <-c.events:
		t.Errorf("unexpected event %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
}

func requireEvents(t *testing.T, c *client, want []string) {
	t.Helper()
	var got []string
	for range want {
		select {
		case e := <-c.events:
			if e.Kind != KindStatus || e.Timestamp == 0 {
				t.Errorf("event %+v: want a timestamped status", e)
			}
			got = append(got, e.MessageID+" "+e.Status+" "+e.Recipient)
		case <-time.After(2 * time.Second):
			t.Fatalf("events so far %q, want %q", got, want)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events = %q, want %q", got, want)
	}
}

func TestPendingStatusesDeliveredOnReconnect(t *testing.T) {
	s, addr := testServer(t, Config{StatusDelay: 20 * time.Millisecond}, nil)
	a := connect(t, addr, 6, 1, "a")
	if _, err := a.Send(ctxT(t), []Message{{ID: "p1", To: "alice"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, func() error {
		if n := s.Shards()[0].PendingEvents; n != 3 {
			return fmt.Errorf("%d pending events, want 3", n)
		}
		return nil
	})
	b := connect(t, addr, 6, 2, "b")
	requireEvents(t, b, []string{"p1 sent alice", "p1 delivered alice", "p1 read alice"})
	if n := s.Shards()[0].PendingEvents; n != 0 {
		t.Errorf("%d events still pending", n)
	}
}

func TestHTTPAPI(t *testing.T) {
	s, addr := testServer(t, Config{StatusDelay: time.Hour}, nil)
	api := httptest.NewServer(s.Handler())
	t.Cleanup(api.Close)
	c := connect(t, addr, 2, 9, "n1")
	if _, err := c.Send(ctxT(t), []Message{{ID: "h1", To: "alice"}, {ID: "h2", To: "bob"}}); err != nil {
		t.Fatal(err)
	}

	var info Info
	getJSON(t, api.URL+"/v1/info", &info)
	if info.KeepaliveMS != testKeepalive.Milliseconds() || len(info.Listen) != 1 || info.Listen[0] != addr {
		t.Errorf("info = %+v", info)
	}
	var conns struct{ Connections []Interval }
	getJSON(t, api.URL+"/v1/connections", &conns)
	if len(conns.Connections) != 1 || conns.Connections[0].Node != "n1" || !conns.Connections[0].Open {
		t.Errorf("connections = %+v", conns)
	}
	var viol Violations
	getJSON(t, api.URL+"/v1/violations", &viol)
	if viol.Count != 0 || viol.Overlaps == nil {
		t.Errorf("violations = %+v, want count 0 and an empty list", viol)
	}
	var shards struct{ Shards []ShardState }
	getJSON(t, api.URL+"/v1/shards", &shards)
	if len(shards.Shards) != 1 || shards.Shards[0].NewestEpoch != 9 || shards.Shards[0].Open == nil || shards.Shards[0].Messages != 2 {
		t.Errorf("shards = %+v", shards)
	}
	var msgs struct{ Messages []Received }
	getJSON(t, api.URL+"/v1/messages?shard=2&to=bob", &msgs)
	requireIDs(t, msgs.Messages, "h2")
	getJSON(t, api.URL+"/v1/messages?shard=3", &msgs)
	requireIDs(t, msgs.Messages)
	var count struct{ Count int }
	getJSON(t, api.URL+"/v1/messages/count", &count)
	if count.Count != 2 {
		t.Errorf("messages/count = %d, want 2", count.Count)
	}

	resp, err := http.Post(api.URL+"/v1/inbound", "application/json",
		strings.NewReader(`{"shard":2,"recipient":"alice","payload":{"text":"hi"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var ack struct {
		ID        string
		Delivered bool
	}
	decode(t, resp, http.StatusAccepted, &ack)
	if ack.ID == "" || !ack.Delivered {
		t.Errorf("inbound ack = %+v", ack)
	}
	select {
	case e := <-c.events:
		if e.Kind != KindInbound || e.MessageID != ack.ID || e.Recipient != "alice" || !bytes.Equal(e.Payload, []byte(`{"text":"hi"}`)) {
			t.Errorf("inbound event = %+v", e)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no inbound event")
	}

	resp, err = http.Post(api.URL+"/v1/inbound", "application/json", strings.NewReader(`{"shard":2,"payload":{bad`))
	if err != nil {
		t.Fatal(err)
	}
	decode(t, resp, http.StatusBadRequest, &struct{}{})
	var health struct{ OK bool }
	getJSON(t, api.URL+"/v1/healthz", &health)
	if !health.OK {
		t.Error("healthz not ok")
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	decode(t, resp, http.StatusOK, v)
}

func decode(t *testing.T, resp *http.Response, code int, v any) {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != code {
		t.Fatalf("%s: HTTP %d, want %d: %s", resp.Request.URL, resp.StatusCode, code, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v: %s", resp.Request.URL, err, b)
	}
}

func TestFindOverlaps(t *testing.T) {
	iv := func(shard int, start, end int64) Interval {
		return Interval{Shard: shard, Start: start, End: end, Open: end == 0}
	}
	for _, tc := range []struct {
		name string
		ivs  []Interval
		want int
	}{
		{"back to back", []Interval{iv(1, 0, 10), iv(1, 10, 20)}, 0},
		{"overlap by one", []Interval{iv(1, 0, 11), iv(1, 10, 20)}, 1},
		{"other shard", []Interval{iv(1, 0, 20), iv(2, 5, 15)}, 0},
		{"open and later", []Interval{iv(1, 0, 0), iv(1, 50, 60)}, 1},
		{"two open", []Interval{iv(1, 0, 0), iv(1, 5, 0)}, 1},
		{"nested unsorted", []Interval{iv(1, 10, 20), iv(1, 0, 100), iv(1, 30, 40)}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FindOverlaps(tc.ivs); got.Count != tc.want || len(got.Overlaps) != tc.want {
				t.Errorf("FindOverlaps = %+v, want %d", got, tc.want)
			}
		})
	}
}

// Events stay with the shard until acknowledged: the next connection gets
// the unacknowledged ones again, with the same sequence numbers.
func TestUnacknowledgedEventsRedelivered(t *testing.T) {
	s, addr := testServer(t, Config{StatusDelay: time.Hour}, nil)
	a := connect(t, addr, 3, 1, "a")
	for i := 1; i <= 3; i++ {
		if _, _, err := s.Inject(Inbound{Shard: 3, ID: fmt.Sprintf("in%d", i), Recipient: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	for range 3 {
		select {
		case e := <-a.events:
			if e.Shard != 3 {
				t.Errorf("event %+v without its shard", e)
			}
			seqs = append(seqs, e.Seq)
		case <-time.After(2 * time.Second):
			t.Fatal("events not pushed")
		}
	}
	if fmt.Sprint(seqs) != "[1 2 3]" {
		t.Fatalf("sequence numbers %v, want [1 2 3]", seqs)
	}
	if err := a.Ack(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	if n := s.Shards()[0].UnackedEvents; n != 1 {
		t.Errorf("%d unacknowledged events after acking 2 of 3", n)
	}
	if err := a.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	b := connect(t, addr, 3, 2, "b")
	select {
	case e := <-b.events:
		if e.MessageID != "in3" || e.Seq != 3 {
			t.Errorf("redelivered %+v, want in3 with seq 3", e)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("unacknowledged event not pushed to the next connection")
	}
	select {
	case e := <-b.events:
		t.Errorf("acknowledged event pushed again: %+v", e)
	case <-time.After(100 * time.Millisecond):
	}
}

// Contact checks follow the network's accounts; sends to an unreachable
// number get a failed status instead of sent/delivered/read.
func TestContactChecksAndUnreachable(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	if err := s.SetUnreachable("+1 555 010 9999"); err != nil {
		t.Fatal(err)
	}
	c := connect(t, addr, 0, 1, "a")
	res, err := c.Check(ctxT(t), []string{"+1 (555) 010-1234", "15550109999", "123"})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != ContactValid || res[0].WAID != "15550101234" || res[1].Status != ContactInvalid || res[2].Status != ContactInvalid {
		t.Errorf("check = %+v", res)
	}
	if _, err := c.Send(ctxT(t), []Message{{ID: "u1", To: "15550109999"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-c.events:
		if e.MessageID != "u1" || e.Status != StatusFailed {
			t.Errorf("event %+v, want a failed status for u1", e)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no status for a message to an unreachable number")
	}
}
