package simnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The Call ops through the plugin's transport against a real network
// server: a read is recorded with the connection that said so, only for a
// message the network has; identities change and need acknowledging with
// the latest hash; the sticker catalogue comes back whole; an unknown op
// and a call without a connection fail with the transport's sentinels.
func TestCallOps(t *testing.T) {
	s, addr := testServer(t, Config{Keepalive: time.Second, StatusDelay: time.Hour}, nil)
	tr := NewTransport(addr, nil)
	t.Cleanup(func() { tr.Close() })
	ctx := ctxT(t)
	if _, err := tr.Call(ctx, transport.OpStickerpacks, nil); !errors.Is(err, transport.ErrNotConnected) {
		t.Fatalf("a call without a connection: %v, want ErrNotConnected", err)
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "a", Deadline: transport.MonoNow() + int64(10*time.Second)}); err != nil {
		t.Fatal(err)
	}
	id, _, err := s.Inject(Inbound{Shard: 0, Recipient: "16315550101"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(transport.MarkReadRequest{MessageID: id, From: "16315550101"})
	if _, err := tr.Call(ctx, transport.OpMarkRead, body); err != nil {
		t.Fatalf("mark read: %v", err)
	}
	body, _ = json.Marshal(transport.MarkReadRequest{MessageID: "nope"})
	if _, err := tr.Call(ctx, transport.OpMarkRead, body); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("mark an unknown message read: %v, want ErrNoSuchItem", err)
	}
	if r := s.Reads(); len(r) != 1 || r[0].MessageID != id || r[0].Shard != 0 || r[0].Epoch != 1 || r[0].Node != "a" {
		t.Errorf("reads %+v", r)
	}

	// Once the network routes by a count of 2, a message of shard 1's
	// contact is not shard 0's to mark: refused, but not as a bad request
	// (the cluster may just not have caught up with a change of the count).
	s.mu.Lock()
	s.learnLayoutLocked(2, 1)
	s.mu.Unlock()
	other := ""
	for i := 0; other == ""; i++ {
		if n := fmt.Sprintf("1631555%04d", i); s.routeLocked(0, n) == 1 {
			other = n
		}
	}
	id2, _, _ := s.Inject(Inbound{Recipient: other})
	body, _ = json.Marshal(transport.MarkReadRequest{MessageID: id2, From: other})
	if _, err := tr.Call(ctx, transport.OpMarkRead, body); err == nil || errors.Is(err, transport.ErrInvalidValue) || errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("mark read another shard's message: %v, want a plain error", err)
	}
	if r := s.Reads(); len(r) != 1 {
		t.Errorf("a refused read was recorded: %+v", r)
	}

	ident := func(waid string) (transport.Identity, error) {
		b, _ := json.Marshal(transport.IdentityRequest{WAID: waid})
		out, err := tr.Call(ctx, transport.OpIdentity, b)
		var id transport.Identity
		if err == nil {
			err = json.Unmarshal(out, &id)
		}
		return id, err
	}
	ack := func(waid, hash string) error {
		b, _ := json.Marshal(transport.IdentityRequest{WAID: waid, Hash: hash})
		_, err := tr.Call(ctx, transport.OpIdentityAck, b)
		return err
	}
	first, err := ident("16315550102")
	if err != nil || !first.Acknowledged || len(first.Hash) != 12 {
		t.Fatalf("first identity %+v, %v", first, err)
	}
	if _, err := s.ChangeIdentity("16315550102"); err != nil {
		t.Fatal(err)
	}
	changed, err := ident("16315550102")
	if err != nil || changed.Acknowledged || changed.Hash == first.Hash || changed.CreatedTimestamp <= first.CreatedTimestamp {
		t.Fatalf("changed identity %+v (first %+v), %v", changed, first, err)
	}
	if err := ack("16315550102", first.Hash); !errors.Is(err, transport.ErrInvalidValue) {
		t.Errorf("ack an old hash: %v, want ErrInvalidValue", err)
	}
	if err := ack("16315550102", changed.Hash); err != nil {
		t.Errorf("ack the latest hash: %v", err)
	}
	if now, _ := ident("16315550102"); !now.Acknowledged {
		t.Errorf("not acknowledged after the ack: %+v", now)
	}
	if _, err := ident("0123"); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("identity of a non-account: %v, want ErrNoSuchItem", err)
	}

	out, err := tr.Call(ctx, transport.OpStickerpacks, nil)
	var cat transport.Stickerpacks
	if err != nil || json.Unmarshal(out, &cat) != nil || len(cat.Packs) != len(firstParty.Packs) {
		t.Errorf("sticker packs: %s, %v", out, err)
	}
	if _, err := tr.Call(ctx, "no_such_op", nil); !errors.Is(err, transport.ErrUnsupported) {
		t.Errorf("an unknown op: %v, want ErrUnsupported", err)
	}
}
