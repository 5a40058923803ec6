package inbound

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

func testDB(t *testing.T) *sql.DB {
	t.Helper()
	db := mariadbtest.Start(t).Open("inbound")
	ctx := context.Background()
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, func(context.Context) error { return nil }, nil); err != nil {
		t.Fatal(err)
	}
	return db
}

func inboundRec(wamid, from string) Record {
	return Record{Event: transport.Event{Kind: transport.EventInbound, MessageID: wamid, Recipient: from, Timestamp: 1750000000,
		Payload: []byte(`{"type":"text","text":{"body":"` + wamid + `"}}`)}, DedupeKey: wamid}
}

func statusRec(wamid, st, to string) Record {
	return Record{Event: transport.Event{Kind: transport.EventStatus, MessageID: "our-" + wamid, Status: st, Recipient: to, Timestamp: 1750000001},
		DedupeKey: wamid + ":" + st}
}

func seqs(evs []transport.Event) string {
	s := ""
	for _, e := range evs {
		s += fmt.Sprintf("%d:%s ", e.Seq, e.MessageID)
	}
	return s
}

// Store numbers each shard's new events from 1 without gaps, drops what it
// stored before (within a call and across calls), and Read, Ack and the
// collector's query work as the plugin and the master use them.
func TestStoreReadAck(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	n, err := Store(ctx, db, map[int][]Record{
		0: {inboundRec("w1", "111"), statusRec("s1", "sent", "111"), inboundRec("w1", "111"), statusRec("s1", "delivered", "111")},
		1: {inboundRec("w2", "222")},
	})
	if err != nil || n != 4 {
		t.Fatalf("Store = %d, %v; want 4 new", n, err)
	}
	// Meta's retry of part of it, with one new event.
	n, err = Store(ctx, db, map[int][]Record{0: {statusRec("s1", "sent", "111"), inboundRec("w3", "111")}, 1: {inboundRec("w2", "222")}})
	if err != nil || n != 1 {
		t.Fatalf("Store of a retry = %d, %v; want 1 new", n, err)
	}
	evs, err := Read(ctx, db, 0, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := seqs(evs), "1:w1 2:our-s1 3:our-s1 4:w3 "; got != want {
		t.Fatalf("shard 0 reads %q, want %q", got, want)
	}
	e := evs[2]
	if e.Kind != transport.EventStatus || e.Status != "delivered" || e.Recipient != "111" || e.Timestamp != 1750000001 || e.Stream != Stream || e.Shard != 0 || e.Payload != nil {
		t.Errorf("event read back: %+v", e)
	}
	if string(evs[0].Payload) != `{"type":"text","text":{"body":"w1"}}` {
		t.Errorf("payload read back: %s", evs[0].Payload)
	}
	if evs, _ := Read(ctx, db, 1, 0, 100); seqs(evs) != "1:w2 " {
		t.Errorf("shard 1 reads %q", seqs(evs))
	}
	if evs, _ := Read(ctx, db, 0, 2, 1); seqs(evs) != "3:our-s1 " {
		t.Errorf("read after 2, limit 1: %q", seqs(evs))
	}
	// Acknowledged events are not read again; a new connection reading
	// from 0 starts at the oldest unacknowledged one.
	if err := Ack(ctx, db, 0, 2); err != nil {
		t.Fatal(err)
	}
	if evs, _ := Read(ctx, db, 0, 0, 100); seqs(evs) != "3:our-s1 4:w3 " {
		t.Errorf("after Ack 2, shard 0 reads %q", seqs(evs))
	}
	// The collector takes acknowledged rows past the retention only.
	if _, err := db.Exec(`UPDATE cloudapi_inbound SET received_at = NOW(6) - INTERVAL 9 DAY`); err != nil {
		t.Fatal(err)
	}
	res, err := db.Exec(CollectQuery, MinRetention.Microseconds(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Errorf("collected %d rows, want the 2 acknowledged", n)
	}
	if evs, _ := Read(ctx, db, 0, 0, 100); seqs(evs) != "3:our-s1 4:w3 " {
		t.Errorf("after collecting, shard 0 reads %q", seqs(evs))
	}
	// Numbering goes on after collection: no seq is ever reused.
	if _, err := Store(ctx, db, map[int][]Record{0: {inboundRec("w5", "111")}}); err != nil {
		t.Fatal(err)
	}
	if evs, _ := Read(ctx, db, 0, 4, 100); seqs(evs) != "5:w5 " {
		t.Errorf("after collecting, a new event reads %q", seqs(evs))
	}
}

// Concurrent webhooks (several gateways, Meta's parallel deliveries, the
// same events twice) leave each shard numbered 1..n without gaps, each
// event once.
func TestStoreConcurrent(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	const writers, perWriter = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				// Writers w and w^1 send the same events: duplicates race.
				id := fmt.Sprintf("w%d-%d", w/2, i)
				if _, err := Store(ctx, db, map[int][]Record{0: {inboundRec(id, "111")}, 1: {statusRec(id, "read", "222")}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for s := range 2 {
		evs, err := Read(ctx, db, s, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for i, e := range evs {
			if e.Seq != uint64(i+1) || seen[e.MessageID] {
				t.Fatalf("shard %d: event %d is seq %d %s (seen before: %v)", s, i, e.Seq, e.MessageID, seen[e.MessageID])
			}
			seen[e.MessageID] = true
		}
		if len(evs) != writers/2*perWriter {
			t.Errorf("shard %d: %d events, want %d", s, len(evs), writers/2*perWriter)
		}
	}
}
