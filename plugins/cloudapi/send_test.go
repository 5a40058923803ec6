package cloudapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

const testPhoneID = "106540352242922"

// liveRig is the plugin against a real MariaDB (schema 10) and the Graph
// API test server, which validates every request against Meta's
// description.
type liveRig struct {
	tr    *Transport
	graph *graphtest.Server
	db    *sql.DB
	media string
}

func newLiveRig(t *testing.T) *liveRig {
	t.Helper()
	db := mariadbtest.Migrated(t, "mc")
	ctx := context.Background()
	g, err := graphtest.New(graphtest.Config{PhoneNumberIDs: []string{testPhoneID}, AccessToken: testToken, AppSecret: "app-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	hs := httptest.NewServer(g)
	t.Cleanup(hs.Close)
	media := t.TempDir()
	cfg, err := FromEnv(envOf(map[string]string{"MC_CLOUDAPI_PHONE_NUMBER_ID": testPhoneID, "MC_CLOUDAPI_ACCESS_TOKEN": testToken,
		"MC_CLOUDAPI_BASE_URL": hs.URL, "MC_CLOUDAPI_THROUGHPUT": "0", "MC_CLOUDAPI_TOKEN_RETRY": "100ms", "MC_MEDIA_DIR": media}))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Delivery.ThrottleInitial, cfg.Delivery.RetryInitial = 50*time.Millisecond, 10*time.Millisecond
	tr, err := Open(cfg, Options{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 3, Node: "core1", Deadline: transport.MonoNow() + int64(time.Minute),
		Layout: transport.Layout{Shards: 1, Version: 1}}); err != nil {
		t.Fatal(err)
	}
	return &liveRig{tr: tr, graph: g, db: db, media: media}
}

// upload puts a file in the media directory with its row, as the
// coreapp's POST /v1/media does.
func (r *liveRig) upload(t *testing.T, id, mime string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(r.media, id), data, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := r.db.Exec(`INSERT INTO media (id, mime_type, size, sha256, created_at) VALUES (?, ?, ?, '', NOW(6))`, id, mime, len(data)); err != nil {
		t.Fatal(err)
	}
}

func (r *liveRig) send(t *testing.T, msgs ...transport.Message) ([]transport.SendResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.tr.Send(ctx, msgs)
}

func msg(id, to, body string) transport.Message {
	var m struct{ Type string }
	json.Unmarshal([]byte(body), &m)
	return transport.Message{ID: id, To: to, Type: m.Type, Body: []byte(body)}
}

// TestSendEveryTypeToTheGraphAPI: every type the gateway accepts reaches
// the test server valid, named by our id; a reply and a reaction name the
// wamid of ours; an upload is sent once; a batch sent again is not posted
// again.
func TestSendEveryTypeToTheGraphAPI(t *testing.T) {
	r := newLiveRig(t)
	const img = "3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e"
	r.upload(t, img, "image/png", []byte("\x89PNG\r\n\x1a\nnot really a picture"))
	first := []transport.Message{msg("m-1", "15550104001", `{"to":"15550104001","type":"text","text":{"body":"hello"}}`)}
	if res, err := r.send(t, first...); err != nil || res[0].Status != transport.SendAccepted {
		t.Fatalf("first send: %+v, %v", res, err)
	}
	var batch []transport.Message
	for i, tc := range translateCases {
		body := strings.ReplaceAll(tc.in, "our-1", "m-1")
		body = strings.ReplaceAll(body, "3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e", img)
		batch = append(batch, msg("b-"+string(rune('a'+i)), tc.to, body))
	}
	res, err := r.send(t, batch...)
	if err != nil {
		t.Fatalf("send %d messages: %v (server requests: %s)", len(batch), err, lastRequests(r.graph, 3))
	}
	for i, x := range res {
		if x.Status != transport.SendAccepted || x.ID != batch[i].ID {
			t.Errorf("%s (%s): %+v", batch[i].ID, translateCases[i].name, x)
		}
	}
	st := r.graph.Snapshot()
	if len(st.Messages) != len(batch)+1 {
		t.Fatalf("the server took %d messages, want %d", len(st.Messages), len(batch)+1)
	}
	firstWAMID := st.Messages[0].WamID
	for _, m := range st.Messages {
		if m.Node != "core1" || m.Shard != 0 || m.Epoch != 3 {
			t.Errorf("message %s sent as node %q shard %d epoch %d", m.Opaque, m.Node, m.Shard, m.Epoch)
		}
		body := string(m.Body)
		if m.Opaque != "m-1" && strings.Contains(body, `"m-1"`) {
			t.Errorf("%s names our id where the wamid belongs: %s", m.Opaque, body)
		}
		if (strings.Contains(m.Opaque, "b-c") || strings.Contains(m.Opaque, "b-t")) && !strings.Contains(body, firstWAMID) {
			t.Errorf("%s: reply or reaction does not name %s: %s", m.Opaque, firstWAMID, body)
		}
	}
	if len(st.Media) != 1 {
		t.Errorf("the upload was sent %d times, want once", len(st.Media))
	}
	var wamid string
	if err := r.db.QueryRow(`SELECT wamid FROM cloudapi_messages WHERE id = 'b-a'`).Scan(&wamid); err != nil || !strings.HasPrefix(wamid, "wamid.") {
		t.Errorf("wamid of b-a: %q, %v", wamid, err)
	}

	// The coreapp lost the answer and sends the batch again: nothing is
	// posted twice.
	res, err = r.send(t, batch...)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range res {
		if x.Status != transport.SendAccepted {
			t.Errorf("resent %s: %+v", batch[i].ID, x)
		}
	}
	if n := len(r.graph.Snapshot().Messages); n != len(batch)+1 {
		t.Errorf("after the batch was sent again the server has %d messages, want %d", n, len(batch)+1)
	}
	if v := r.graph.Violations(); v.Count != 0 {
		t.Errorf("violations: %+v", v)
	}
}

func lastRequests(g *graphtest.Server, n int) string {
	st := g.Snapshot()
	if len(st.Requests) > n {
		st.Requests = st.Requests[len(st.Requests)-n:]
	}
	b, _ := json.Marshal(st.Requests)
	return string(b)
}

// TestSendFailuresAndLimits: each Graph error the plugin handles, as the
// coreapp sees it.
func TestSendFailuresAndLimits(t *testing.T) {
	r := newLiveRig(t)
	text := func(id, to string) transport.Message {
		return msg(id, to, `{"to":"`+to+`","type":"text","text":{"body":"x"}}`)
	}
	// Permanent errors fail the message alone, with the original's code.
	for i, c := range []struct{ graph, onPrem int }{{131026, 1026}, {131047, 470}, {131009, 1009}, {100, 1000}} {
		r.graph.AddFault(graphtest.Fault{Path: "/messages", Count: 1, Code: c.graph})
		id := "fail-" + string(rune('a'+i))
		res, err := r.send(t, text(id, "15550100001"), text(id+"-next", "15550100001"))
		if err != nil {
			t.Fatalf("code %d: %v", c.graph, err)
		}
		se, ok := transport.ParseSendError(res[0].Error)
		if res[0].Status != transport.SendFailed || !ok || se.Code != c.onPrem || !strings.Contains(se.Details, "Cloud API error") {
			t.Errorf("code %d: %+v (%+v), want failed with %d", c.graph, res[0], se, c.onPrem)
		}
		if res[1].Status != transport.SendAccepted {
			t.Errorf("code %d: the next message of the recipient: %+v", c.graph, res[1])
		}
		// Sent again (the coreapp did not store the failure): answered
		// from the record, no request.
		before := len(r.graph.Snapshot().Requests)
		res, err = r.send(t, text(id, "15550100001"))
		if err != nil || res[0].Status != transport.SendFailed {
			t.Errorf("code %d sent again: %+v, %v", c.graph, res, err)
		}
		if after := len(r.graph.Snapshot().Requests); after != before {
			t.Errorf("code %d: a failed message was posted again", c.graph)
		}
	}
	// Retryable errors (1, 2, 131000, 5xx) are retried within the Send.
	for i, f := range []graphtest.Fault{{Code: 1}, {Code: 2}, {Code: 131000}, {HTTPStatus: 503}} {
		f.Path, f.Count = "/messages", 1
		r.graph.AddFault(f)
		res, err := r.send(t, text("retry-"+string(rune('a'+i)), "15550100003"))
		if err != nil || res[0].Status != transport.SendAccepted {
			t.Errorf("fault %+v: %+v, %v; want sent after a retry", f, res, err)
		}
	}
	// The number's limit (130429): the batch is left for later, then goes.
	r.graph.AddFault(graphtest.Fault{Path: "/messages", Count: 1, Code: 130429})
	_, err := r.send(t, text("thr-1", "15550100004"))
	if !errors.Is(err, ErrLater) {
		t.Errorf("130429: %v, want ErrLater", err)
	}
	if res, err := r.send(t, text("thr-1", "15550100004"), text("thr-2", "15550100005")); err != nil || res[0].Status != transport.SendAccepted || res[1].Status != transport.SendAccepted {
		t.Errorf("after the throttle: %+v, %v", res, err)
	}
	// The pair limit (131056) holds that recipient only, in order.
	r.graph.AddFault(graphtest.Fault{Path: "/messages", Count: 1, Code: 131056})
	if _, err = r.send(t, text("pair-1", "15550100006"), text("pair-2", "15550100006")); !errors.Is(err, ErrLater) {
		t.Errorf("131056: %v, want ErrLater", err)
	}
	if res, err := r.send(t, text("pair-other", "15550100007")); err != nil || res[0].Status != transport.SendAccepted {
		t.Errorf("another recipient while one is pair-limited: %+v, %v", res, err)
	}
	before := len(r.graph.Snapshot().Requests)
	if _, err = r.send(t, text("pair-1", "15550100006"), text("pair-2", "15550100006")); !errors.Is(err, ErrLater) {
		t.Errorf("the pair-limited recipient at once: %v, want ErrLater", err)
	}
	if after := len(r.graph.Snapshot().Requests); after != before {
		t.Errorf("the pair-limited recipient was posted to during its hold")
	}
	for _, m := range r.graph.Snapshot().Messages {
		if strings.HasPrefix(m.Opaque, "pair-1") || strings.HasPrefix(m.Opaque, "pair-2") {
			t.Errorf("%s was taken during the hold", m.Opaque)
		}
	}
	// The token (190): sending stops, Health says so until fixed.
	r.graph.ExpireToken()
	if _, err := r.send(t, text("tok-1", "15550100008")); !errors.Is(err, ErrLater) {
		t.Errorf("190: %v, want ErrLater", err)
	}
	h, _ := r.tr.Health(context.Background())
	if !strings.Contains(h.LastError, "190") || strings.Contains(h.LastError, testToken) {
		t.Errorf("Health after 190: %+v", h)
	}
	r.graph.SetToken(testToken)
	time.Sleep(150 * time.Millisecond) // the engine's TokenRetry
	if res, err := r.send(t, text("tok-1", "15550100008")); err != nil || res[0].Status != transport.SendAccepted {
		t.Errorf("after the token was fixed: %+v, %v", res, err)
	}
	if h, _ := r.tr.Health(context.Background()); h.LastError != "" {
		t.Errorf("Health after the token was fixed: %+v", h)
	}
}

// TestEventsFromTheWebhookRows: what the gateway stored for the claimed
// shard is pushed in seq order and acknowledged; another shard's is not.
func TestEventsFromTheWebhookRows(t *testing.T) {
	r := newLiveRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := func(kind transport.EventKind, id, status, from string) inbound.Record {
		return inbound.Record{Event: transport.Event{Kind: kind, MessageID: id, Status: status, Recipient: from, Timestamp: time.Now().Unix(),
			Payload: []byte(`{}`)}, DedupeKey: id + ":" + status}
	}
	if _, err := inbound.Store(ctx, r.db, map[int][]inbound.Record{
		0: {rec(transport.EventInbound, "wamid.IN1", "", "15550100001"), rec(transport.EventStatus, "m-1", "sent", "15550100001")},
		1: {rec(transport.EventInbound, "wamid.OTHER", "", "15550100002")},
	}); err != nil {
		t.Fatal(err)
	}
	ch, err := r.tr.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []transport.Event
	for len(got) < 2 {
		select {
		case e := <-ch:
			got = append(got, e)
		case <-ctx.Done():
			t.Fatalf("events: got %+v", got)
		}
	}
	if got[0].Seq != 1 || got[1].Seq != 2 || got[0].MessageID != "wamid.IN1" || got[1].Status != "sent" || got[0].Stream != Stream || got[0].Shard != 0 || got[0].Conn == 0 {
		t.Fatalf("events: %+v", got)
	}
	if err := r.tr.Ack(ctx, 1, got[1].Conn, 2); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("Ack for a shard not held: %v", err)
	}
	if err := r.tr.Ack(ctx, 0, got[1].Conn, 2); err != nil {
		t.Fatal(err)
	}
	var acked int
	r.db.QueryRow(`SELECT COUNT(*) FROM cloudapi_inbound WHERE shard = 0 AND acked = 1`).Scan(&acked)
	if acked != 2 {
		t.Errorf("%d rows acknowledged, want 2", acked)
	}
	// A new event arrives after the acknowledged ones: the gateway that
	// stored it wakes the plugin, which reads it at once (the safety poll
	// is 10 s).
	if _, err := inbound.Store(ctx, r.db, map[int][]inbound.Record{0: {rec(transport.EventStatus, "m-1", "delivered", "15550100001")}}); err != nil {
		t.Fatal(err)
	}
	woken := time.Now()
	if _, err := r.tr.Call(ctx, transport.OpEventsStored, []byte(`{"shard":0}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		if e.Seq != 3 || e.Status != "delivered" {
			t.Errorf("next event: %+v", e)
		}
		if d := time.Since(woken); d > time.Second {
			t.Errorf("the woken read came %v after the wake, want at once", d)
		}
	case <-ctx.Done():
		t.Fatal("no event after the acknowledged ones")
	}
	// Events stop when the claim lapses: shard 1's row is never pushed.
	r.tr.Disconnect(ctx)
	select {
	case e := <-ch:
		t.Errorf("an event while not connected: %+v", e)
	case <-time.After(300 * time.Millisecond):
	}
}

// countingReader counts the reads of the InboundReader it wraps.
type countingReader struct {
	InboundReader
	reads *atomic.Int64
}

func (c countingReader) Read(ctx context.Context, shard int, afterSeq uint64, limit int) ([]transport.Event, error) {
	c.reads.Add(1)
	return c.InboundReader.Read(ctx, shard, afterSeq, limit)
}

// TestEventsReadWhenWokenOrAtTheSafetyPoll: an idle plugin does not read
// the shard's rows (it read them once, on subscribing); a wake for
// another shard reads nothing; a row stored without a wake (the gateway's
// wake lost) is found by the safety poll; a new claim reads at once.
func TestEventsReadWhenWokenOrAtTheSafetyPoll(t *testing.T) {
	r := newLiveRig(t)
	var reads atomic.Int64
	r.tr.inbound = countingReader{r.tr.inbound, &reads}
	r.tr.safetyPoll = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch, err := r.tr.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads in 500 ms idle, want the first one only", n)
	}
	if _, err := r.tr.Call(ctx, transport.OpEventsStored, []byte(`{"shard":1}`)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := reads.Load(); n != 1 {
		t.Errorf("a wake for a shard not held read (%d reads)", n)
	}
	stored := time.Now()
	if _, err := inbound.Store(ctx, r.db, map[int][]inbound.Record{0: {{Event: transport.Event{Kind: transport.EventInbound, MessageID: "wamid.LOST",
		Recipient: "15550100001", Timestamp: time.Now().Unix(), Payload: []byte(`{}`)}, DedupeKey: "wamid.LOST"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		if e.MessageID != "wamid.LOST" {
			t.Errorf("event %+v", e)
		}
		t.Logf("a row stored without a wake was pushed %v later (safety poll 1.5 s)", time.Since(stored).Round(time.Millisecond))
	case <-ctx.Done():
		t.Fatal("a row stored without a wake was never pushed")
	}
	if err := r.tr.Ack(ctx, 0, r.mustConn(t), 1); err != nil {
		t.Fatal(err)
	}
	// Another claim on the shard (a failover to this node) reads at once:
	// the unacknowledged row comes again under the new claim.
	if _, err := inbound.Store(ctx, r.db, map[int][]inbound.Record{0: {{Event: transport.Event{Kind: transport.EventInbound, MessageID: "wamid.LEFT",
		Recipient: "15550100001", Timestamp: time.Now().Unix(), Payload: []byte(`{}`)}, DedupeKey: "wamid.LEFT"}}}); err != nil {
		t.Fatal(err)
	}
	before := reads.Load()
	connected := time.Now()
	if err := r.tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 4, Node: "core2", Deadline: transport.MonoNow() + int64(time.Minute),
		Layout: transport.Layout{Shards: 1, Version: 1}}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		if e.MessageID != "wamid.LEFT" {
			t.Errorf("event %+v", e)
		}
		if d := time.Since(connected); d > time.Second {
			t.Errorf("the new claim's backlog came %v after Connect, want at once", d)
		}
	case <-ctx.Done():
		t.Fatal("the new claim's backlog was never pushed")
	}
	if reads.Load() == before {
		t.Errorf("no read after the new claim")
	}
}

// mustConn is the Conn of the claim the rig's plugin holds.
func (r *liveRig) mustConn(t *testing.T) int64 {
	t.Helper()
	c, err := r.tr.Current()
	if err != nil {
		t.Fatal(err)
	}
	return c.Conn
}

// TestEventsPushedAgainWhenNotAcknowledged: events the coreapp does not
// acknowledge (its cursor stopped) come again from the oldest under a new
// Conn; an Ack from the earlier Conn of the same claim still counts.
func TestEventsPushedAgainWhenNotAcknowledged(t *testing.T) {
	r := newLiveRig(t)
	r.tr.redeliverAfter = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var recs []inbound.Record
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("wamid.R%d", i)
		recs = append(recs, inbound.Record{Event: transport.Event{Kind: transport.EventInbound, MessageID: id, Recipient: "15550100001",
			Timestamp: time.Now().Unix(), Payload: []byte(`{}`)}, DedupeKey: id})
	}
	if _, err := inbound.Store(ctx, r.db, map[int][]inbound.Record{0: recs}); err != nil {
		t.Fatal(err)
	}
	ch, err := r.tr.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func() transport.Event {
		select {
		case e := <-ch:
			return e
		case <-ctx.Done():
			t.Fatal("no event")
		}
		return transport.Event{}
	}
	a1, a2, a3 := next(), next(), next()
	if a1.Seq != 1 || a3.Seq != 3 || a1.Conn != a3.Conn {
		t.Fatalf("first push: %+v %+v %+v", a1, a2, a3)
	}
	if err := r.tr.Ack(ctx, 0, a1.Conn, 1); err != nil {
		t.Fatal(err)
	}
	// 2 and 3 stay unacknowledged: they come again, under a new Conn.
	b2, b3 := next(), next()
	if b2.Seq != 2 || b3.Seq != 3 || b2.Conn <= a1.Conn || b2.Conn != b3.Conn {
		t.Fatalf("second push: %+v %+v (first conn %d)", b2, b3, a1.Conn)
	}
	if err := r.tr.Ack(ctx, 0, a1.Conn, 3); err != nil {
		t.Errorf("an Ack from the claim's earlier Conn: %v", err)
	}
	var left int
	r.db.QueryRow(`SELECT COUNT(*) FROM cloudapi_inbound WHERE acked = 0`).Scan(&left)
	if left != 0 {
		t.Errorf("%d rows unacknowledged", left)
	}
	// A new claim's events are not acknowledged with an older claim's Conn.
	if err := r.tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 4, Node: "core1", Deadline: transport.MonoNow() + int64(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := r.tr.Ack(ctx, 0, b3.Conn, 3); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("an Ack from the previous claim: %v, want ErrNotConnected", err)
	}
}
