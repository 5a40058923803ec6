package clustertest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

// TestCloudAPIAccountOps: a cluster whose masters and coreapps run
// transport-cloudapi against the Graph API test server, driven through the
// real gateway as an On-Premises client would: registration (request
// code, verify, /register with the PIN), profile about, business profile,
// two-step set and (not available) delete, an inbound image fetched into
// the media directory and served by GET /v1/media/{id}, and that message
// marked read by its wamid, and an upload sent twice by our id (one Cloud
// upload) then deleted (the Cloud copy too). graphapid's record shows each
// Cloud API call.
func TestCloudAPIAccountOps(t *testing.T) {
	gwPort, graphPort := FreePort(t), FreePort(t)
	graphURL := fmt.Sprintf("http://127.0.0.1:%d", graphPort)
	// The masters make the account calls: they need the transport too,
	// and graphapid's address before it starts, so it listens on a port
	// chosen here (a later -listen wins over the harness's).
	c := New(t, Options{CloudAPI: true, Coreapps: 2,
		GraphArgs: []string{"-listen", fmt.Sprintf("127.0.0.1:%d", graphPort), "-webhook-url", fmt.Sprintf("http://127.0.0.1:%d/cloudapi/webhook", gwPort)},
		MasterEnv: []string{"MC_TRANSPORT=" + filepath.Join(Binaries(t), "transport-cloudapi"), "MC_CLOUDAPI_PHONE_NUMBER_ID=" + CloudPhoneID, "MC_CLOUDAPI_ACCESS_TOKEN=" + CloudToken, "MC_CLOUDAPI_BASE_URL=" + graphURL}})
	if c.GraphURL != graphURL {
		t.Fatalf("graphapid at %s, want %s", c.GraphURL, graphURL)
	}
	caddy := buildCaddyBin(t)
	_, gw := startCaddyProc(t, c, caddy, "gateway", gwPort, fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
}
:%d {
	multiconnect {
		bcrypt_cost 4
		cloudapi_app_secret %s
		cloudapi_verify_token %s
		cloudapi_phone_number_id %s
	}
}
`, gwPort, CloudAppSecret, CloudVerifyToken, CloudPhoneID))
	token := gatewayLogin(t, gw)
	hc := &http.Client{Timeout: 30 * time.Second}
	call := func(method, path, ct string, body []byte) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, gw+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	want := func(method, path, body string, status int) []byte {
		t.Helper()
		var st int
		var b []byte
		// A master that just started may not be primary yet (1017, which
		// the gateway retries for a while).
		c.Eventually(30*time.Second, method+" "+path, func() error {
			st, b = call(method, path, "application/json", []byte(body))
			if st == http.StatusServiceUnavailable {
				return fmt.Errorf("HTTP %d %s", st, b)
			}
			return nil
		})
		if st != status {
			t.Fatalf("%s %s: HTTP %d %s, want %d", method, path, st, b, status)
		}
		return b
	}

	// Registration: the number is graphapid's phone number id (1 + the
	// rest as the national number); the PIN goes to /register.
	cc, phone := CloudPhoneID[:1], CloudPhoneID[1:]
	cert := base64.StdEncoding.EncodeToString([]byte("not used on the Cloud API"))
	b := want("POST", "/v1/account", fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"sms","cert":%q,"pin":"112233"}`, cc, phone, cert), http.StatusAccepted)
	if !strings.Contains(string(b), `"vname":"graphtest"`) {
		t.Errorf("POST /v1/account: %s, want the number's verified name", b)
	}
	var codes map[string]string
	if err := c.GraphDo("GET", "/_test/codes", nil, &codes); err != nil || codes[CloudPhoneID] == "" {
		t.Fatalf("codes issued: %v, %v", codes, err)
	}
	want("POST", "/v1/account/verify", fmt.Sprintf(`{"code":%q}`, codes[CloudPhoneID]), http.StatusCreated)
	st := c.GraphState()
	if st.Pins[CloudPhoneID] != "112233" {
		t.Errorf("registered with PIN %q, want the request's", st.Pins[CloudPhoneID])
	}

	want("PATCH", "/v1/settings/profile/about", `{"text":"Open all night"}`, http.StatusOK)
	want("POST", "/v1/settings/business/profile", `{"address":"1 Main St","description":"Shop","email":"shop@example.com","vertical":"Restaurant","websites":["https://example.com"]}`, http.StatusOK)
	p := c.GraphState().Profiles[CloudPhoneID]
	if p["about"] != "Open all night" || p["vertical"] != "RESTAURANT" || p["email"] != "shop@example.com" {
		t.Errorf("profile at graphapid: %v", p)
	}
	want("POST", "/v1/settings/account/two-step", `{"pin":"445566"}`, http.StatusOK)
	if pin := c.GraphState().Pins[CloudPhoneID]; pin != "445566" {
		t.Errorf("two-step PIN at graphapid: %q", pin)
	}
	b = want("DELETE", "/v1/settings/account/two-step", "", http.StatusNotFound)
	if !strings.Contains(string(b), "1006") || !strings.Contains(string(b), "no endpoint to disable two-step verification") {
		t.Errorf("DELETE two-step: %s, want 1006 with the reason", b)
	}

	// inbound has graphapid send the webhook of a contact's message.
	inbound := func(typ string, content json.RawMessage) string {
		t.Helper()
		var sent struct {
			ID string `json:"id"`
		}
		if err := c.GraphDo("POST", "/_test/inbound", graphtest.Inbound{From: "4915112345678", Type: typ, Content: content}, &sent); err != nil {
			t.Fatal(err)
		}
		return sent.ID
	}
	// inboundImage has graphapid hold img as Meta holds an inbound medium
	// and send the webhook of a message naming it: its media id and wamid.
	inboundImage := func(img []byte) (mediaID, wamid string) {
		t.Helper()
		var mi graphtest.MediaInfo
		resp, err := hc.Post(c.GraphURL+"/_test/media?phone="+CloudPhoneID+"&type=image%2Fjpeg", "image/jpeg", bytes.NewReader(img))
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&mi)
		resp.Body.Close()
		if mi.ID == "" {
			t.Fatalf("graphapid took no media: %+v", mi)
		}
		sum := sha256.Sum256(img)
		content, _ := json.Marshal(map[string]string{"id": mi.ID, "mime_type": "image/jpeg", "sha256": hex.EncodeToString(sum[:])})
		return mi.ID, inbound("image", content)
	}

	// An inbound image: the shard's coreapp fetches it before storing the
	// callback.
	img := append([]byte{0xff, 0xd8, 0xff, 0xe0}, bytes.Repeat([]byte("jpeg"), 500)...)
	imgID, imgWamid := inboundImage(img)
	var got []byte
	c.Eventually(30*time.Second, "GET /v1/media/"+imgID+" serves the inbound image", func() error {
		st, body := call("GET", "/v1/media/"+imgID, "", nil)
		if st != http.StatusOK {
			return fmt.Errorf("HTTP %d %s", st, body)
		}
		got = body
		return nil
	})
	if !bytes.Equal(got, img) {
		t.Errorf("GET /v1/media/%s: %d bytes, want the %d graphapid holds", imgID, len(got), len(img))
	}

	// A type auto_download does not list is not fetched ahead, but
	// GET /v1/media/{id} fetches it on request, as the original did.
	c.PatchSettings(`{"media":{"auto_download":["document"]}}`)
	time.Sleep(time.Second) // every node's settings cache polls every 200 ms
	img2 := append([]byte{0xff, 0xd8, 0xff, 0xe1}, bytes.Repeat([]byte("later"), 300)...)
	img2ID, img2Wamid := inboundImage(img2)
	c.Eventually(30*time.Second, "the second image's callback stored", func() error {
		var n int
		if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM inbound_messages WHERE id = ?`, img2Wamid).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%d rows, %v", n, err)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(c.Dir, "media", img2ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an image fetched ahead though auto_download lists only documents: %v", err)
	}
	st2, got2 := call("GET", "/v1/media/"+img2ID, "", nil)
	if st2 != http.StatusOK || !bytes.Equal(got2, img2) {
		t.Errorf("GET /v1/media/%s on request: HTTP %d, %d bytes; want the %d graphapid holds", img2ID, st2, len(got2), len(img2))
	}

	// Marked read by its id, the wamid. A wamid is base64: one holding a
	// '/' (escaped in the path) is marked read too.
	ids := []string{imgWamid}
	for i := 0; i < 20 && !strings.Contains(ids[len(ids)-1], "/"); i++ {
		ids = append(ids, inbound("text", json.RawMessage(`{"body":"hi"}`)))
	}
	for _, id := range []string{ids[0], ids[len(ids)-1]} {
		c.Eventually(30*time.Second, "mark read "+id, func() error {
			st, body := call("PUT", "/v1/messages/"+url.PathEscape(id), "application/json", []byte(`{"status":"read"}`))
			if st != http.StatusOK {
				return fmt.Errorf("HTTP %d %s", st, body)
			}
			return nil
		})
	}
	reads := c.GraphState().Reads
	if len(reads) != 2 || reads[0].MessageID != ids[0] || reads[1].MessageID != ids[len(ids)-1] || !reads[0].Known || !reads[1].Known {
		t.Errorf("reads at graphapid: %+v, want %s and %s", reads, ids[0], ids[len(ids)-1])
	}

	// Media the other way: an upload sent by our id goes to the Cloud API
	// once, and deleting the upload deletes the Cloud copy.
	st0, b := call("POST", "/v1/media", "image/jpeg", img)
	var up struct {
		Media []struct {
			ID string `json:"id"`
		} `json:"media"`
	}
	if json.Unmarshal(b, &up); st0 != http.StatusCreated || len(up.Media) != 1 {
		t.Fatalf("POST /v1/media: HTTP %d %s", st0, b)
	}
	ours := up.Media[0].ID
	for i := 0; i < 2; i++ {
		msg := fmt.Sprintf(`{"to":"4915112345678","type":"image","image":{"id":%q,"caption":"again %d"}}`, ours, i)
		if st, b := call("POST", "/v1/messages", "application/json", []byte(msg)); st != http.StatusCreated {
			t.Fatalf("POST /v1/messages: HTTP %d %s", st, b)
		}
	}
	var cloudID string
	c.Eventually(30*time.Second, "both messages sent with one upload", func() error {
		st := c.GraphState()
		if len(st.Messages) != 2 {
			return fmt.Errorf("%d messages at graphapid", len(st.Messages))
		}
		var uploads []string
		for _, m := range st.Media {
			if m.ID != imgID && m.ID != img2ID { // not the inbound ones
				uploads = append(uploads, m.ID)
			}
		}
		if len(uploads) != 1 {
			return fmt.Errorf("uploads %v, want one", uploads)
		}
		cloudID = uploads[0]
		for _, m := range st.Messages {
			if !strings.Contains(string(m.Body), cloudID) {
				return fmt.Errorf("message %s does not name the upload %s", m.Body, cloudID)
			}
		}
		return nil
	})
	if st, b := call("DELETE", "/v1/media/"+ours, "", nil); st != http.StatusOK {
		t.Fatalf("DELETE /v1/media: HTTP %d %s", st, b)
	}
	c.Eventually(10*time.Second, "the Cloud copy deleted", func() error {
		for _, m := range c.GraphState().Media {
			if m.ID == cloudID && !m.Deleted {
				return fmt.Errorf("%s not deleted at graphapid", cloudID)
			}
		}
		return nil
	})
	t.Logf("graphapid served %d requests", len(c.GraphState().Requests))
}
