package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// schemaDB is a private MariaDB with the cluster's schema.
func schemaDB(t testing.TB) *sql.DB {
	t.Helper()
	db := mariadbtest.Migrated(t, "mc")
	return db
}

// addStatus stores a status event as the webhook does (cloudapi_inbound).
func addStatus(t testing.TB, db *sql.DB, shard int, seq int64, id, wamid, status string) {
	t.Helper()
	_, err := db.Exec(`INSERT INTO cloudapi_inbound (shard, seq, dedupe_key, kind, message_id, status, recipient, ts, payload, received_at)
		VALUES (?, ?, ?, 'status', ?, ?, '1', 0, ?, NOW(6))`,
		shard, seq, wamid+"/"+status, id, status, `{"statuses":[{"id":"`+wamid+`","status":"`+status+`"}]}`)
	if err != nil {
		t.Fatal(err)
	}
}

// The MySQL store keeps what the engine records, and a new primary (a
// new Engine on the same database) neither resends a message of unknown
// outcome nor a sent one.
func TestSQLStore(t *testing.T) {
	db := schemaDB(t)
	s := NewSQLStore(db)
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Microsecond)
	m := Outgoing{ID: "m1", To: "15550001"}
	for i := 0; i < 2; i++ {
		if err := s.Begin(ctx, m, "node-a", t0); err != nil {
			t.Fatal(err)
		}
	}
	ge := &graphapi.Error{Code: graphapi.CodeReengagement, HTTPStatus: 400, Message: "Re-engagement message",
		ErrorData: &graphapi.ErrorData{Details: "more than 24 hours"}}
	if err := s.Finish(ctx, "m1", StateFailed, "", ge, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Load(ctx, []string{"m1", "none"})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := recs["m1"]
	if !ok || len(recs) != 1 || r.State != StateFailed || r.Attempts != 2 || r.Node != "node-a" || r.Recipient != "15550001" ||
		!r.FirstAt.Equal(t0) || !r.LastAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("record %+v", r)
	}
	if r.Err == nil || r.Err.Code != ge.Code || r.Err.HTTPStatus != 400 || r.Err.ErrorData == nil || r.Err.ErrorData.Details != "more than 24 hours" {
		t.Fatalf("stored error %+v", r.Err)
	}

	// Failover: engine A's request has an unknown outcome; engine B (the
	// new primary) waits for its status and never posts it.
	pa := newFakePoster()
	pa.script["u1"] = []error{errUnknown}
	cfg := fast()
	cfg.Policy, cfg.UnknownWait = PolicyResend, time.Minute
	a := NewEngine(cfg, pa, s)
	ms := msgs("u1>15550002", "u2>15550002")
	want(t, send(t, a, ms), "u1=later u2=later")
	pb := newFakePoster()
	b := NewEngine(cfg, pb, s)
	b.SetNode("node-b") // the plugin's Connect gives the claim's node
	want(t, send(t, b, ms), "u1=later u2=later")
	if seen, err := s.StatusSeen(ctx, "u1"); err != nil || seen.Found {
		t.Fatalf("status before any: %+v %v", seen, err)
	}
	addStatus(t, db, 0, 1, "u1", "wamid.HBgLMTU1NTAwMDI", "sent")
	res := send(t, b, ms)
	want(t, res, "u1=sent u2=sent")
	if res[0].WAMID != "wamid.HBgLMTU1NTAwMDI" {
		t.Fatalf("wamid from the status: %q", res[0].WAMID)
	}
	if n := pb.count("u1"); n != 0 {
		t.Fatalf("the new primary posted u1 %d times", n)
	}
	var wamid, node string
	var attempts int
	if err := db.QueryRow(`SELECT wamid, node, attempts FROM cloudapi_messages WHERE id = 'u2'`).Scan(&wamid, &node, &attempts); err != nil || wamid != "wamid.u2" || node != "node-b" || attempts != 1 {
		t.Fatalf("u2 row: %q %q %d %v", wamid, node, attempts, err)
	}
	// Concurrent writes are committed in groups, each one's own values.
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := Outgoing{ID: fmt.Sprintf("g%02d", i), To: fmt.Sprintf("1555%04d", i)}
			for k := 0; k < 2; k++ {
				if err := s.Begin(ctx, m, "node-b", time.Now()); err != nil {
					t.Error(err)
				}
			}
			if err := s.Finish(ctx, m.ID, StateSent, "wamid.g"+m.ID, nil, time.Now()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM cloudapi_messages WHERE id LIKE 'g%' AND state = 'sent'
		AND wamid = CONCAT('wamid.g', id) AND attempts = 2 AND recipient = CONCAT('1555', LPAD(SUBSTRING(id, 2), 4, '0'))`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 64 {
		t.Fatalf("%d of 64 concurrent records as written", n)
	}

	// And once more: both are sent, nothing posted.
	want(t, send(t, b, ms), "u1=sent u2=sent")
	if n := len(pb.sent()); n != 1 {
		t.Fatalf("%d posts by the new primary, want 1 (u2)", n)
	}
}
