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
