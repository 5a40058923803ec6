package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

func (c *Cluster) countRows(table string) int {
	c.T.Helper()
	var n int
	if err := c.SQL.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
		c.T.Fatal(err)
	}
	return n
}

// raw makes a request to a coreapp with the cluster secret.
func (c *Cluster) raw(method, addr, path, contentType string, body []byte) (int, http.Header, []byte) {
	c.T.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(string(body)))
	if err != nil {
		c.T.Fatal(err)
	}
	req.Header.Set(cluster.SecretHeader, c.Secret)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.T.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func errorCode(b []byte) int {
	var e struct {
		Errors []struct {
			Code  int    `json:"code"`
			Title string `json:"title"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &e) != nil || len(e.Errors) != 1 || e.Errors[0].Title == "" {
		return 0
	}
	return e.Errors[0].Code
}

// Bad input of every kind is refused with the original's code and stores
// nothing; a secondary coreapp, or a primary asked for another shard's
// recipient, answers 1018 and stores nothing; an idempotency key makes a
// retry return the first id; media and contacts work end to end.
func TestMessagesAPI(t *testing.T) {
	c := New(t, Options{Shards: 2, Coreapps: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tos := recipients(c, 2) // one per shard
	to, other := tos[0], tos[1]
	primary, err := c.ShardPrimary(c.ShardOf(to))
	if err != nil {
		t.Fatal(err)
	}
	otherPrimary, _ := c.ShardPrimary(c.ShardOf(other))
	var secondary string
	for _, p := range c.Coreapps {
		if p.Addr != primary && p.Addr != otherPrimary {
			secondary = p.Addr
		}
	}

	bad := []struct {
		body string
		code int
	}{
		{`{"to":"` + to + `","type":"text"}`, 1008},
		{`{"to":"` + to + `","type":"text","text":{"body":` + fmt.Sprintf("%q", strings.Repeat("y", 4097)) + `}}`, 1009},
		{`{"to":"` + to + `","type":"text","text":{"body":true}}`, 1009},
		{`{"to":"` + to + `","type":"telegram"}`, 1009},
		{`{"to":"` + to + `","type":"template","template":{"name":"n"}}`, 1008},
		{`{"to":"` + to + `","type":"image","image":{"id":"0b5e9b8a-3f5c-4d8e-9a1b-2c3d4e5f6a7b"}}`, 1006},
		{`{"to":"` + to + `","type":"location","location":{"latitude":"north","longitude":1}}`, 1009},
		{`{"to":"` + to + `","type":"contacts","contacts":[{"name":{}}]}`, 1008},
		{`{"to":` + to + `}`, 1009},
		{`{"to":"` + to + `"`, 1025},
	}
	for _, b := range bad {
		code, id, body, err := c.PostMessageTo(ctx, primary, b.body, "")
		if err != nil || id != "" || errorCode(body) != b.code || code/100 != 4 {
			t.Errorf("%.80s: HTTP %d %s (%v), want error %d", b.body, code, body, err, b.code)
		}
	}
	good := `{"to":"` + to + `","text":{"body":"hello"}}`
	if code, _, body, _ := c.PostMessageTo(ctx, secondary, good, ""); code != 503 || errorCode(body) != 1018 {
		t.Errorf("secondary coreapp: HTTP %d %s, want 1018", code, body)
	}
	if code, _, body, _ := c.PostMessageTo(ctx, otherPrimary, good, ""); code != 503 || errorCode(body) != 1018 {
		t.Errorf("primary of the other shard: HTTP %d %s, want 1018", code, body)
	}
	if n := c.countRows("messages"); n != 0 {
		t.Fatalf("refused requests stored %d messages", n)
	}

	// Idempotency: the same key returns the first id and stores one row.
	_, id1, _, err := c.PostMessageTo(ctx, primary, good, "k-1")
	if err != nil || id1 == "" {
		t.Fatalf("send: %v", err)
	}
	_, id2, _, _ := c.PostMessageTo(ctx, primary, good, "k-1")
	if id2 != id1 {
		t.Errorf("retry with the same key got id %q, want the first %q", id2, id1)
	}
	if n := c.countRows("messages"); n != 1 {
		t.Errorf("%d rows after a retried send, want 1", n)
	}

	// Media: upload, send by id, download, delete.
	png := []byte("\x89PNG fake image bytes")
	code, _, body := c.raw("POST", primary, "/v1/media", "image/png", png)
	var up struct {
		Media []struct{ ID string } `json:"media"`
	}
	if code != 201 || json.Unmarshal(body, &up) != nil || len(up.Media) != 1 {
		t.Fatalf("upload: HTTP %d %s", code, body)
	}
	mid := up.Media[0].ID
	if code, _, body := c.raw("POST", primary, "/v1/media", "application/json", []byte(`{}`)); errorCode(body) != 1009 {
		t.Errorf("JSON upload: HTTP %d %s, want 1009", code, body)
	}
	_, imgID, body, err := c.PostMessageTo(ctx, primary, `{"to":"`+to+`","type":"image","image":{"id":"`+mid+`","caption":"c"}}`, "")
	if err != nil || imgID == "" {
		t.Fatalf("image by id: %s %v", body, err)
	}
	code, hdr, got := c.raw("GET", otherPrimary, "/v1/media/"+mid, "", nil) // any coreapp: the directory is shared
	if code != 200 || string(got) != string(png) || hdr.Get("Content-Type") != "image/png" {
		t.Errorf("download: HTTP %d %q %q", code, hdr.Get("Content-Type"), got)
	}
	if code, _, body := c.raw("DELETE", primary, "/v1/media/"+mid, "", nil); code != 200 {
		t.Errorf("delete: HTTP %d %s", code, body)
	}
	if code, _, body := c.raw("GET", primary, "/v1/media/"+mid, "", nil); errorCode(body) != 1006 {
		t.Errorf("download after delete: HTTP %d %s, want 1006", code, body)
	}
	c.Eventually(10*time.Second, "the image message at the network", func() error {
		for _, m := range c.NetworkMessages(to) {
			if m.ID == imgID && m.Type == "image" && strings.Contains(string(m.Body), mid) {
				return nil
			}
		}
		return fmt.Errorf("not there")
	})

	// Contacts: wait, no_wait (processing, then cached), invalid, force_check.
	if err := c.SimnetPost("/v1/unreachable", map[string]string{"number": "15550109999"}); err != nil {
		t.Fatal(err)
	}
	check := func(body string) []map[string]string {
		t.Helper()
		code, _, b := c.raw("POST", primary, "/v1/contacts", "application/json", []byte(body))
		var out struct {
			Contacts []map[string]string `json:"contacts"`
		}
		if code != 200 || json.Unmarshal(b, &out) != nil {
			t.Fatalf("contacts %s: HTTP %d %s", body, code, b)
		}
		return out.Contacts
	}
	res := check(`{"blocking":"wait","contacts":["+1 (555) 010-1234","15550109999","12"]}`)
	if len(res) != 3 || res[0]["status"] != "valid" || res[0]["wa_id"] != "15550101234" || res[0]["input"] != "+1 (555) 010-1234" ||
		res[1]["status"] != "invalid" || res[2]["status"] != "invalid" {
		t.Errorf("blocking check: %v", res)
	}
	if res := check(`{"contacts":["15550104321"]}`); res[0]["status"] != "processing" {
		t.Errorf("no_wait check of a new number: %v, want processing", res)
	}
	c.Eventually(5*time.Second, "the background check cached", func() error {
		if res := check(`{"contacts":["15550104321"]}`); res[0]["status"] != "valid" {
			return fmt.Errorf("%v", res)
		}
		return nil
	})
	if err := c.SimnetPost("/v1/unreachable", map[string]string{"number": "15550104321"}); err != nil {
		t.Fatal(err)
	}
	if res := check(`{"contacts":["15550104321"]}`); res[0]["status"] != "valid" {
		t.Errorf("cached result not used: %v", res)
	}
	if res := check(`{"blocking":"wait","force_check":true,"contacts":["15550104321"]}`); res[0]["status"] != "invalid" {
		t.Errorf("force_check did not ask the network again: %v", res)
	}
	for _, b := range []struct {
		body string
		code int
	}{{`{}`, 1008}, {`{"contacts":"1555"}`, 1009}, {`{"contacts":[],"blocking":"wait"}`, 1009}, {`{"contacts":["1"],"blocking":"later"}`, 1009}} {
		if code, _, body := c.raw("POST", primary, "/v1/contacts", "application/json", []byte(b.body)); errorCode(body) != b.code {
			t.Errorf("contacts %s: HTTP %d %s, want %d", b.body, code, body, b.code)
		}
	}
}
