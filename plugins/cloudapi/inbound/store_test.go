package inbound

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

func testDB(t *testing.T) *sql.DB {
	t.Helper()
	return mariadbtest.Migrated(t, "inbound")
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

// When the shard count changes, unacknowledged events move to the end of
// their contact's new shard's stream, in order, leaving moved rows in
// their old places; acknowledged ones stay. A shrink empties the removed
// shard the same way.
func TestRelayout(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	// Contacts of shard 0 and 1 among 2 (all in shard 0 among 1).
	var in0, in1 string
	for i := 0; in0 == "" || in1 == ""; i++ {
		c := fmt.Sprintf("1555%07d", i)
		if s, _ := shard.For(c, 2); s == 0 && in0 == "" {
			in0 = c
		} else if s == 1 && in1 == "" {
			in1 = c
		}
	}
	if _, err := Store(ctx, db, map[int][]Record{0: {inboundRec("a1", in1), inboundRec("b1", in0), inboundRec("a2", in1), statusRec("a3", "read", in1)}}); err != nil {
		t.Fatal(err)
	}
	if err := Ack(ctx, db, 0, 1); err != nil { // a1 is the coreapp's already
		t.Fatal(err)
	}
	if _, err := Store(ctx, db, map[int][]Record{1: {inboundRec("c1", in1)}}); err != nil { // stored under 2 shards already
		t.Fatal(err)
	}
	n, err := Relayout(ctx, db, 2)
	if err != nil || n != 2 {
		t.Fatalf("Relayout(2) = %d, %v; want the 2 unacknowledged events of %s", n, err, in1)
	}
	kinds := func(evs []transport.Event) string {
		s := ""
		for _, e := range evs {
			s += fmt.Sprintf("%d:%s:%s ", e.Seq, e.Kind, e.MessageID)
		}
		return s
	}
	if evs, _ := Read(ctx, db, 0, 0, 100); kinds(evs) != "2:inbound:b1 3:moved: 4:moved: " {
		t.Errorf("shard 0 after doubling: %q", kinds(evs))
	}
	if evs, _ := Read(ctx, db, 1, 0, 100); kinds(evs) != "1:inbound:c1 2:inbound:a2 3:status:our-a3 " {
		t.Errorf("shard 1 after doubling: %q", kinds(evs))
	}
	if n, err := Relayout(ctx, db, 2); err != nil || n != 0 {
		t.Errorf("Relayout again = %d, %v; want nothing to move", n, err)
	}
	// A retry of a moved event is still a duplicate.
	if n, err := Store(ctx, db, map[int][]Record{1: {inboundRec("a2", in1)}}); err != nil || n != 0 {
		t.Errorf("Meta's retry of a moved event stored %d, %v", n, err)
	}
	// Back to one shard: shard 1's events go to the end of shard 0's.
	if n, err := Relayout(ctx, db, 1); err != nil || n != 3 {
		t.Fatalf("Relayout(1) = %d, %v; want 3", n, err)
	}
	if evs, _ := Read(ctx, db, 0, 0, 100); kinds(evs) != "2:inbound:b1 3:moved: 4:moved: 5:inbound:c1 6:inbound:a2 7:status:our-a3 " {
		t.Errorf("shard 0 after shrinking: %q", kinds(evs))
	}
	// The removed shard has no reader: its moved rows are acknowledged
	// already, for the collector.
	if evs, _ := Read(ctx, db, 1, 0, 100); len(evs) != 0 {
		t.Errorf("shard 1 after shrinking: %q, want nothing unacknowledged", kinds(evs))
	}
	var movedAcked int
	db.QueryRow(`SELECT COUNT(*) FROM cloudapi_inbound WHERE shard = 1 AND kind = 'moved' AND acked = 1`).Scan(&movedAcked)
	if movedAcked != 3 {
		t.Errorf("%d acknowledged moved rows in the removed shard, want 3", movedAcked)
	}
}

// StoreForContacts computes each contact's shard under the count it reads
// in its own transaction, and waits for a re-shard holding the cluster row:
// a webhook stored during a re-shard lands under the new count, never under
// the one the re-shard replaced. A shrink then a grow back leaves the
// returning shard's stream without a gap.
func TestStoreForContactsDuringReshard(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	var in0, in1 string
	for i := 0; in0 == "" || in1 == ""; i++ {
		c := fmt.Sprintf("1555%07d", i)
		if s, _ := shard.For(c, 2); s == 0 && in0 == "" {
			in0 = c
		} else if s == 1 && in1 == "" {
			in1 = c
		}
	}
	setShards := func(tx *sql.Tx, n int) {
		t.Helper()
		var from int
		if err := tx.QueryRow(`SELECT shards FROM cluster WHERE id = 1 FOR UPDATE`).Scan(&from); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`UPDATE cluster SET shards = ? WHERE id = 1`, n); err != nil {
			t.Fatal(err)
		}
		if _, err := RelayoutTx(ctx, tx, n); err != nil {
			t.Fatal(err)
		}
	}
	reshard := func(n int) {
		t.Helper()
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		setShards(tx, n)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	shardOf := func(key string) int {
		t.Helper()
		var s int
		if err := db.QueryRow(`SELECT shard FROM cloudapi_inbound WHERE dedupe_key = ?`, key).Scan(&s); err != nil {
			t.Fatalf("row %s: %v", key, err)
		}
		return s
	}
	if err := cluster.Init(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := StoreForContacts(ctx, db, []Record{inboundRec("x1", in1), inboundRec("y1", in0)}); err != nil {
		t.Fatal(err)
	}
	if s := shardOf("x1"); s != 0 {
		t.Errorf("x1 stored in shard %d under 1 shard", s)
	}
	// A re-shard to 2 holds the cluster row: the store waits, then
	// stores under 2.
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	setShards(tx, 2)
	done := make(chan error, 1)
	go func() {
		_, shards, err := StoreForContacts(ctx, db, []Record{inboundRec("x2", in1)})
		if err == nil && !slices.Equal(shards, []int{1}) {
			err = fmt.Errorf("the shards that got rows: %v, want [1] (whose primary is told)", shards)
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("StoreForContacts returned (%v) while the re-shard held the cluster row", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := shardOf("x2"); s != 1 {
		t.Errorf("x2, stored during the re-shard to 2, is in shard %d, want 1", s)
	}
	if evs, _ := Read(ctx, db, 1, 0, 100); seqs(evs) != "1:x1 2:x2 " {
		t.Errorf("shard 1 after the grow: %q, want x1 moved ahead of x2", seqs(evs))
	}
	// Shrink and grow back: shard 1's moved rows are acknowledged when it
	// goes, so its next reader starts after them without a gap.
	reshard(1)
	if _, _, err := StoreForContacts(ctx, db, []Record{inboundRec("x3", in1)}); err != nil {
		t.Fatal(err)
	}
	reshard(2)
	if evs, _ := Read(ctx, db, 1, 0, 100); seqs(evs) != "3:x1 4:x2 5:x3 " {
		t.Errorf("shard 1 after 2 -> 1 -> 2: %q, want its stream to go on after the acknowledged moved rows", seqs(evs))
	}
	if evs, _ := Read(ctx, db, 0, 0, 100); len(evs) == 0 || evs[0].Seq != 1 {
		t.Errorf("shard 0 after 2 -> 1 -> 2: %q, want the oldest unacknowledged first", seqs(evs))
	}
}
