package simnet

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// A batch whose messages add up to more than one frame goes out in several
// frames, in order; a message that alone encodes to more than a frame
// fails by itself and the others are sent. Bodies of '<' grow sixfold when
// encoded (\u003c), so the split must measure, not trust len(Body).
func TestSendSplitsFramesAndFailsOversizeAlone(t *testing.T) {
	s, addr := testServer(t, Config{Keepalive: time.Second}, nil)
	tr := NewTransport(addr, nil)
	t.Cleanup(func() { tr.Close() })
	ctx := ctxT(t)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "a", Deadline: transport.MonoNow() + int64(10*time.Second)}); err != nil {
		t.Fatal(err)
	}
	body := func(n int) []byte { return []byte(`"` + strings.Repeat("<", n) + `"`) }
	var msgs []transport.Message
	for i := 0; i < 6; i++ {
		b := body(300 << 10) // ~1.8 MB encoded
		if i == 3 {
			b = body(800 << 10) // ~4.8 MB encoded: over any frame
		}
		msgs = append(msgs, transport.Message{ID: fmt.Sprintf("m%d", i), To: "15550100001", Type: "text", Body: b})
	}
	res, err := tr.Send(ctx, msgs)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	for i, r := range res {
		want := transport.SendAccepted
		if i == 3 {
			want = transport.SendFailed
		}
		if r.ID != msgs[i].ID || r.Status != want {
			t.Errorf("result %d: %+v, want %s", i, r, want)
		}
	}
	t.Logf("the oversize message: %s", res[3].Error)
	requireIDs(t, s.Messages(MessageFilter{}), "m0", "m1", "m2", "m4", "m5")
}

// Issue 12, scenario 10 (b, c): with 12,000 events pending and nobody
// subscribed yet (a restarted plugin's connection, before the coreapp
// subscribes), the plugin used to keep only the newest 10,000 and drop the
// rest before anything stored them. Now the network pushes at most
// pushWindow unacknowledged events, the plugin keeps all it got, and the
// subscriber gets every event, in order, as it acknowledges them.
func TestEventsFlowControlledNotDropped(t *testing.T) {
	s, addr := testServer(t, Config{Keepalive: time.Second, StatusDelay: time.Hour}, nil)
	const n = 12000
	for i := 1; i <= n; i++ {
		if _, _, err := s.Inject(Inbound{Shard: 0, ID: fmt.Sprintf("in%d", i), Recipient: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	tr := NewTransport(addr, nil)
	t.Cleanup(func() { tr.Close() })
	ctx := ctxT(t)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "a", Deadline: transport.MonoNow() + int64(20*time.Second)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		tr.events.mu.Lock()
		defer tr.events.mu.Unlock()
		if len(tr.events.backlog) < pushWindow {
			return fmt.Errorf("%d events kept", len(tr.events.backlog))
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // would more come?
	tr.events.mu.Lock()
	kept := len(tr.events.backlog)
	tr.events.mu.Unlock()
	t.Logf("with nobody subscribed the plugin holds %d of %d pending events", kept, n)
	if kept != pushWindow {
		t.Errorf("the plugin holds %d events, want the network's window %d", kept, pushWindow)
	}
	ch, err := tr.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var next uint64 = 1
	for next <= n {
		select {
		case e := <-ch:
			if e.Seq != next || e.MessageID != fmt.Sprintf("in%d", next) || e.Stream == "" || e.Conn == 0 {
				t.Fatalf("event %+v, want seq %d", e, next)
			}
			if next%500 == 0 || next == n {
				if err := tr.Ack(ctx, 0, e.Conn, e.Seq); err != nil {
					t.Fatal(err)
				}
			}
			next++
		case <-time.After(5 * time.Second):
			t.Fatalf("no event after seq %d", next-1)
		}
	}
	if u := s.Shards()[0].UnackedEvents; u != 0 {
		t.Errorf("%d events unacknowledged at the end", u)
	}
}
