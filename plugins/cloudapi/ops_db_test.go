package cloudapi

import (
	"context"
	"errors"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// With the cluster's database: a medium is uploaded once and its Cloud id
// used again (cloudapi_media) until it is too old to be sent; deleting our
// upload deletes the Cloud copy; registration takes the stored two-step
// PIN when the request gives none.
func TestMediaCacheAndStoredPin(t *testing.T) {
	r := newLiveRig(t)
	tr, gs, db, ctx := r.tr, r.graph, r.db, context.Background()
	c, _ := tr.Current()
	ours := "5d0c2a8e-1f3b-4c5d-9e6f-708192a3b4c5"
	r.upload(t, ours, "application/pdf", []byte("%PDF-1.4 not really"))
	first, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil {
		t.Fatal(err)
	}
	again, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil || again != first {
		t.Fatalf("second send: %q, %v; want the cached %q", again, err, first)
	}
	media := gs.Snapshot().Media
	if len(media) != 1 || media[0].MimeType != "application/pdf" {
		t.Fatalf("media at the server after two sends: %+v; want one upload, of the stored type", media)
	}
	// Past Meta's retention the medium is uploaded again.
	if _, err := db.Exec(`UPDATE cloudapi_media SET uploaded_at = NOW(6) - INTERVAL 30 DAY WHERE media_id = ?`, ours); err != nil {
		t.Fatal(err)
	}
	renewed, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil || renewed == first || len(gs.Snapshot().Media) != 2 {
		t.Fatalf("after 30 days: %q (was %q), %v; want a new upload", renewed, first, err)
	}
	if _, err := tr.ops.MediaID(ctx, c.sender(), "00000000-0000-4000-8000-000000000000"); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an id we do not have: %v, want ErrNoSuchItem", err)
	}

	if _, err := tr.Call(ctx, transport.OpMediaDelete, opBody(transport.MediaRef{ID: ours})); err != nil {
		t.Fatal(err)
	}
	for _, m := range gs.Snapshot().Media {
		if m.Deleted != (m.ID == renewed) {
			t.Errorf("after delete: %+v; want only %s deleted", m, renewed)
		}
	}
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM cloudapi_media WHERE media_id = ?`, ours).Scan(&n)
	if n != 0 {
		t.Errorf("the Cloud copy is still remembered after delete")
	}
	// A medium never sent has no Cloud copy: nothing to delete.
	gs.Reset()
	if _, err := tr.Call(ctx, transport.OpMediaDelete, opBody(transport.MediaRef{ID: ours})); err != nil || len(served(t, gs)) != 0 {
		t.Errorf("deleting a medium without a Cloud copy: %v, sent %v", err, served(t, gs))
	}

	// The stored two-step PIN (the master's settings row).
	if _, err := db.Exec(`INSERT INTO settings (name, value, updated_at) VALUES ('account.two_step', '{"pin":"424242"}', NOW(6))`); err != nil {
		t.Fatal(err)
	}
	cc, phone := testPhoneID[:1], testPhoneID[1:]
	if _, err := tr.RequestCode(ctx, transport.RegistrationRequest{CC: cc, Phone: phone, Method: transport.MethodSMS}); err != nil {
		t.Fatalf("request code with the stored PIN: %v", err)
	}
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: cc, Phone: phone, Code: gs.Snapshot().Codes[testPhoneID]}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if pin := gs.Snapshot().Pins[testPhoneID]; pin != "424242" {
		t.Errorf("registered with PIN %q, want the stored one", pin)
	}
}
