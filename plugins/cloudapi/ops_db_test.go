package cloudapi

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// With the cluster's database: a medium is uploaded once and its Cloud id
// used again (cloudapi_media) until it is too old to be sent; deleting our
// upload deletes the Cloud copy; registration takes the stored two-step
// PIN when the request gives none.
func TestMediaCacheAndStoredPin(t *testing.T) {
	srv := mariadbtest.Start(t)
	db := srv.Open("mc")
	ctx := context.Background()
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, func(context.Context) error { return nil }, nil); err != nil {
		t.Fatal(err)
	}
	g := newGraphServer(t)
	cfg := Config{PhoneNumberID: testPhoneID, AccessToken: opsToken, GraphVersion: "v23.0", BaseURL: g.srv.URL, MediaDir: t.TempDir()}
	tr := New(cfg, Options{DB: db})
	claimShard(t, tr)
	c, _ := tr.Current()

	ours := "5d0c2a8e-1f3b-4c5d-9e6f-708192a3b4c5"
	if err := os.WriteFile(filepath.Join(cfg.MediaDir, ours), []byte("%PDF-1.4 not really"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO media (id, mime_type, size, sha256, created_at) VALUES (?, 'application/pdf', 19, '', NOW(6))`, ours); err != nil {
		t.Fatal(err)
	}
	first, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil {
		t.Fatal(err)
	}
	again, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil || again != first {
		t.Fatalf("second send: %q, %v; want the cached %q", again, err, first)
	}
	uploads := func() int {
		n := 0
		for _, r := range g.taken() {
			if r.Path == "/"+testPhoneID+"/media" {
				n++
				if r.Fields["type"] != "application/pdf" {
					t.Errorf("uploaded as %q, want the stored type", r.Fields["type"])
				}
			}
		}
		return n
	}
	if n := uploads(); n != 1 {
		t.Fatalf("%d uploads for two sends, want 1", n)
	}
	// Past Meta's retention the medium is uploaded again.
	if _, err := db.Exec(`UPDATE cloudapi_media SET uploaded_at = NOW(6) - INTERVAL 30 DAY WHERE media_id = ?`, ours); err != nil {
		t.Fatal(err)
	}
	renewed, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil || renewed == first || uploads() != 2 {
		t.Fatalf("after 30 days: %q (was %q), %d uploads, %v; want a new upload", renewed, first, uploads(), err)
	}
	if _, err := tr.ops.MediaID(ctx, c.sender(), "00000000-0000-4000-8000-000000000000"); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an id we do not have: %v, want ErrNoSuchItem", err)
	}

	g.reset()
	if _, err := tr.Call(ctx, transport.OpMediaDelete, opBody(transport.MediaRef{ID: ours})); err != nil {
		t.Fatal(err)
	}
	reqs := g.taken()
	if len(reqs) != 1 || reqs[0].Method != http.MethodDelete || reqs[0].Path != "/"+renewed {
		t.Fatalf("delete sent %+v, want DELETE /%s", reqs, renewed)
	}
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM cloudapi_media WHERE media_id = ?`, ours).Scan(&n)
	if n != 0 {
		t.Errorf("the Cloud copy is still remembered after delete")
	}
	// A medium never sent has no Cloud copy: nothing to delete.
	g.reset()
	if _, err := tr.Call(ctx, transport.OpMediaDelete, opBody(transport.MediaRef{ID: ours})); err != nil || len(g.taken()) != 0 {
		t.Errorf("deleting a medium without a Cloud copy: %v, sent %+v", err, g.taken())
	}

	// The stored two-step PIN (the master's settings row).
	if _, err := db.Exec(`INSERT INTO settings (name, value, updated_at) VALUES ('account.two_step', '{"pin":"424242"}', NOW(6))`); err != nil {
		t.Fatal(err)
	}
	g.reset()
	g.verified = true
	res, err := tr.RequestCode(ctx, transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodSMS})
	if err != nil || !res.AlreadyRegistered {
		t.Fatalf("register with the stored PIN: %+v, %v", res, err)
	}
	reqs = g.taken()
	if len(reqs) != 2 || string(reqs[1].Body) != `{"messaging_product":"whatsapp","pin":"424242"}` {
		t.Errorf("register sent %+v, want the stored PIN", reqs)
	}
}
