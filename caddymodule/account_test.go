package caddymodule

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// netAccount is the simulated network's GET /v1/account/settings.
type netAccount struct {
	About string `json:"about"`
	Photo *struct {
		ContentType string `json:"content_type"`
		Size        int    `json:"size"`
		Width       int    `json:"width"`
		Height      int    `json:"height"`
	} `json:"photo"`
	BusinessProfile businessProfile `json:"business_profile"`
	TwoStep         bool            `json:"two_step"`
	Updates         int             `json:"updates"`
}

type businessProfile struct {
	Address     string   `json:"address"`
	Description string   `json:"description"`
	Email       string   `json:"email"`
	Vertical    string   `json:"vertical"`
	Websites    []string `json:"websites"`
}

// testPNG is a w×w PNG of one colour.
func testPNG(t *testing.T, w int, c color.RGBA) []byte {
	t.Helper()
	return testRectPNG(t, w, w, c)
}

// testRectPNG is a w×h PNG of one colour.
func testRectPNG(t *testing.T, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < w*h; i++ {
		img.Set(i%w, i/w, c)
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// jpegEdge is the side of a square JPEG (0 if it is neither).
func jpegEdge(t *testing.T, b []byte) int {
	t.Helper()
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(b))
	if err != nil || cfg.Width != cfg.Height {
		return 0
	}
	return cfg.Width
}

// accountClient is the admin's view of the account settings through the
// gateway and of the network behind it.
type accountClient struct {
	t     *testing.T
	cl    *clustertest.Cluster
	g     *gateway
	token string
}

func (a *accountClient) call(method, path, body string, want int) string {
	a.t.Helper()
	st, out := a.g.do(method, path, body, jsonHeaders(bearer(a.token)))
	if st != want {
		a.t.Fatalf("%s %s %s: HTTP %d %s, want %d", method, path, body, st, out, want)
	}
	return out
}

// refused sends a request that must fail with code and change nothing:
// neither the account rows of the settings table nor the network.
func (a *accountClient) refused(method, path, contentType, body string, code int) {
	a.t.Helper()
	rowsBefore, netBefore := accountRows(a.t, a.cl.SQL), a.network()
	st, out := a.g.do(method, path, body, map[string]string{"Authorization": "Bearer " + a.token, "Content-Type": contentType})
	if st != apierror.Status(code) || errCode(out) != code {
		a.t.Errorf("%s %s %.60q: HTTP %d %s, want %d with %d", method, path, body, st, out, apierror.Status(code), code)
	}
	if after := accountRows(a.t, a.cl.SQL); !reflect.DeepEqual(after, rowsBefore) {
		a.t.Errorf("%s %s was refused but the settings rows changed", method, path)
	}
	if after := a.network(); !reflect.DeepEqual(after, netBefore) {
		a.t.Errorf("%s %s was refused but the network changed: %+v -> %+v", method, path, netBefore, after)
	}
}

func (a *accountClient) network() netAccount {
	a.t.Helper()
	var n netAccount
	if err := a.cl.SimnetJSON("/v1/account/settings", &n); err != nil {
		a.t.Fatalf("the network's account settings: %v", err)
	}
	return n
}

func (a *accountClient) about() string {
	a.t.Helper()
	var doc struct {
		Settings struct {
			Profile struct {
				About struct {
					Text string `json:"text"`
				} `json:"about"`
			} `json:"profile"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(a.call("GET", "/v1/settings/profile/about", "", 200)), &doc); err != nil {
		a.t.Fatal(err)
	}
	return doc.Settings.Profile.About.Text
}

func (a *accountClient) business() businessProfile {
	a.t.Helper()
	var doc struct {
		Settings struct {
			Business struct {
				Profile businessProfile `json:"profile"`
			} `json:"business"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(a.call("GET", "/v1/settings/business/profile", "", 200)), &doc); err != nil {
		a.t.Fatal(err)
	}
	return doc.Settings.Business.Profile
}

// photo is GET /v1/settings/profile/photo: the image and its type.
func (a *accountClient) photo() ([]byte, string) {
	a.t.Helper()
	req, _ := http.NewRequest("GET", a.g.url+"/v1/settings/profile/photo", nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.g.http.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		a.t.Fatalf("GET /v1/settings/profile/photo: HTTP %d %s", resp.StatusCode, b)
	}
	return b, resp.Header.Get("Content-Type")
}

func (a *accountClient) photoLink() string {
	a.t.Helper()
	var doc struct {
		Settings struct {
			Profile struct {
				Photo struct {
					Link string `json:"link"`
				} `json:"photo"`
			} `json:"profile"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(a.call("GET", "/v1/settings/profile/photo?format=link", "", 200)), &doc); err != nil {
		a.t.Fatal(err)
	}
	return doc.Settings.Profile.Photo.Link
}

func (a *accountClient) uploadRaw(img []byte, contentType string) {
	a.t.Helper()
	st, out := a.g.do("POST", "/v1/settings/profile/photo", string(img), map[string]string{"Authorization": "Bearer " + a.token, "Content-Type": contentType})
	if st != 200 {
		a.t.Fatalf("upload the photo raw: HTTP %d %s", st, out)
	}
}

func (a *accountClient) uploadMultipart(img []byte) {
	a.t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fw, _ := mw.CreateFormFile("file", "photo.png")
	fw.Write(img)
	mw.Close()
	st, out := a.g.do("POST", "/v1/settings/profile/photo", b.String(), map[string]string{"Authorization": "Bearer " + a.token, "Content-Type": mw.FormDataContentType()})
	if st != 200 {
		a.t.Fatalf("upload the photo as a multipart form: HTTP %d %s", st, out)
	}
}

// accountRows is every account-level settings row.
func accountRows(t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	return settingsRows(t, db, "account.%")
}

func settingsRows(t *testing.T, db *sql.DB, like string) map[string]string {
	t.Helper()
	rows, err := db.Query(`SELECT name, value FROM settings WHERE name LIKE ?`, like)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var n, v string
		rows.Scan(&n, &v)
		out[n] = v
	}
	return out
}

func fetch(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: HTTP %d %s", url, resp.StatusCode, b)
	}
	return b
}

// TestAccountSettingsThroughTheNetwork sets each account-level setting
// through the gateway, reads it back, checks that the simulated network
// has it, refuses bad values with the original's codes while changing
// nothing, then SIGKILLs the primary master and reads every setting back
// from the new one, which also applies changes through its own plugin.
func TestAccountSettingsThroughTheNetwork(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 1, Shards: 1}, "")
	a := &accountClient{t: t, cl: cl, g: g, token: g.loginAdmin()}

	if got := a.about(); got != "" {
		t.Errorf("about before any was set: %q", got)
	}
	a.call("GET", "/v1/settings/profile/photo", "", 404)

	// About.
	const about = "Open 9 to 5, Monday to Friday ☎ 😀"
	a.call("PATCH", "/v1/settings/profile/about", fmt.Sprintf(`{"text":%q}`, about), 200)
	if got := a.about(); got != about {
		t.Errorf("about read back %q, want %q", got, about)
	}
	if n := a.network(); n.About != about {
		t.Errorf("the network's about %q, want %q", n.About, about)
	}

	// Photo: raw, then as a multipart form. It comes back as the
	// original made it: the centred square, at most 640 px, a JPEG.
	red, blue := testPNG(t, 16, color.RGBA{200, 0, 0, 255}), testRectPNG(t, 1200, 800, color.RGBA{0, 0, 200, 255})
	a.uploadRaw(red, "image/png")
	photo1, ct := a.photo()
	if ct != "image/jpeg" || jpegEdge(t, photo1) != 16 {
		t.Errorf("photo read back: %s, %d px, want a 16 px JPEG", ct, jpegEdge(t, photo1))
	}
	if got := fetch(t, a.photoLink()); !bytes.Equal(got, photo1) {
		t.Errorf("the network's link serves %d bytes, not the photo", len(got))
	}
	a.uploadMultipart(blue)
	photo2, _ := a.photo()
	if jpegEdge(t, photo2) != 640 {
		t.Errorf("a 1200×800 photo came back %d px square, want 640", jpegEdge(t, photo2))
	}
	if n := a.network(); n.Photo == nil || n.Photo.Size != len(photo2) || n.Photo.Width != 640 || n.Photo.Height != 640 {
		t.Errorf("the network's photo %+v, want the %d-byte 640 px one", n.Photo, len(photo2))
	}

	// A photo larger than the gateway's held-body size streams through;
	// one over the limit is refused.
	noisy := image.NewRGBA(image.Rect(0, 0, 1000, 1000))
	rand.NewChaCha8([32]byte{1}).Read(noisy.Pix)
	var big bytes.Buffer
	png.Encode(&big, noisy)
	if big.Len() < 2<<20 {
		t.Fatalf("the noisy photo is only %d bytes", big.Len())
	}
	a.uploadRaw(big.Bytes(), "image/png")
	if got, _ := a.photo(); jpegEdge(t, got) != 640 {
		t.Errorf("the %d-byte photo came back %d px, want 640", big.Len(), jpegEdge(t, got))
	}
	a.uploadMultipart(blue)
	a.refused("POST", "/v1/settings/profile/photo", "image/png", string(make([]byte, 11<<20)), apierror.ParameterInvalid)

	// Business profile, whole then in part.
	bp := businessProfile{Address: "1 Main St, Springfield", Description: "Widgets and more", Email: "sales@example.com",
		Vertical: "Shopping and Retail", Websites: []string{"https://example.com", "https://shop.example.com"}}
	b, _ := json.Marshal(bp)
	a.call("POST", "/v1/settings/business/profile", string(b), 200)
	a.call("POST", "/v1/settings/business/profile", `{"email":"hello@example.com"}`, 200)
	bp.Email = "hello@example.com"
	if got := a.business(); !reflect.DeepEqual(got, bp) {
		t.Errorf("business profile read back %+v, want %+v", got, bp)
	}
	if n := a.network(); !reflect.DeepEqual(n.BusinessProfile, bp) {
		t.Errorf("the network's business profile %+v, want %+v", n.BusinessProfile, bp)
	}

	// Two-step verification.
	a.call("POST", "/v1/settings/account/two-step", `{"pin":"135790"}`, 200)
	if !a.network().TwoStep {
		t.Error("the network has no two-step PIN after POST two-step")
	}

	// Bad values: the original's codes, nothing changes.
	a.refused("PATCH", "/v1/settings/profile/about", "application/json", fmt.Sprintf(`{"text":%q}`, strings.Repeat("x", 140)), apierror.ParameterInvalid)
	a.refused("PATCH", "/v1/settings/profile/about", "application/json", `{}`, apierror.ParameterMissing)
	a.refused("PATCH", "/v1/settings/profile/about", "application/json", `text=hi`, apierror.RequestNotValid)
	a.refused("POST", "/v1/settings/profile/photo", "image/png", "not a picture", apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/profile/photo", "image/png", "", apierror.ParameterMissing)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"websites":["https://a.example","https://b.example","https://c.example"]}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"websites":["example.com"]}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"email":"sales at example"}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"vertical":"Spaceships"}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"vertical":""}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", fmt.Sprintf(`{"address":%q}`, strings.Repeat("a", 257)), apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/business/profile", "application/json", `{"phone":"123"}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/account/two-step", "application/json", `{"pin":"12a456"}`, apierror.ParameterInvalid)
	a.refused("POST", "/v1/settings/account/two-step", "application/json", `{}`, apierror.ParameterMissing)
	// A USER may not touch them.
	st, _ := g.do("POST", "/v1/users", `{"username":"bob","password":"B0b-passw0rd!","role":"USER"}`, jsonHeaders(bearer(a.token)))
	if st != http.StatusCreated && st != http.StatusOK {
		t.Fatalf("create a USER: HTTP %d", st)
	}
	st, body := g.do("POST", "/v1/users/login", "", basic("bob", "B0b-passw0rd!"))
	if st != 200 {
		t.Fatalf("USER login: HTTP %d %s", st, body)
	}
	user := &accountClient{t: t, cl: cl, g: g, token: tokenOf(t, body)}
	user.refused("PATCH", "/v1/settings/profile/about", "application/json", `{"text":"mine now"}`, apierror.AccessDenied)

	// SIGKILL the primary master: the new one reads every setting back.
	primary, err := cl.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	cl.MasterByAddr(primary).Kill()
	cl.Eventually(15*time.Second, "another master holds the lease", func() error {
		addr, err := cl.PrimaryMasterAddr()
		if err != nil || addr == primary {
			return fmt.Errorf("primary %q %v", addr, err)
		}
		return nil
	})
	t.Logf("new primary master %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	cl.Eventually(10*time.Second, "the new primary master answers", func() error {
		if st, out := g.do("GET", "/v1/settings/profile/about", "", bearer(a.token)); st != 200 {
			return fmt.Errorf("HTTP %d %s", st, out)
		}
		return nil
	})
	if a.about() != about {
		t.Errorf("about after the failover %q, want %q", a.about(), about)
	}
	if img, _ := a.photo(); !bytes.Equal(img, photo2) {
		t.Errorf("photo after the failover: %d bytes, want %d", len(img), len(photo2))
	}
	if got := a.business(); !reflect.DeepEqual(got, bp) {
		t.Errorf("business profile after the failover %+v, want %+v", got, bp)
	}
	// The new primary applies changes through its own plugin.
	a.call("DELETE", "/v1/settings/profile/photo", "", 200)
	a.call("DELETE", "/v1/settings/account/two-step", "", 200)
	a.call("GET", "/v1/settings/profile/photo", "", 404)
	if n := a.network(); n.Photo != nil || n.TwoStep {
		t.Errorf("the network after DELETE photo and two-step on the new primary: %+v", n)
	}
	if rows := accountRows(t, cl.SQL); rows["account.profile.photo"] != "" || rows["account.two_step"] != "" || rows["account.profile.about"] == "" {
		t.Errorf("settings rows after the deletes: %v", keys(rows))
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// dbState is what a restore may change: every settings row and the users.
type dbState struct {
	Settings map[string]string
	Users    map[string]string // username -> role and hash
}

func readDBState(t *testing.T, db *sql.DB) dbState {
	t.Helper()
	s := dbState{Settings: settingsRows(t, db, "%"), Users: map[string]string{}}
	rows, err := db.Query(`SELECT username, role, password_hash FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var u, r, h string
		rows.Scan(&u, &r, &h)
		s.Users[u] = r + " " + h
	}
	return s
}

// TestBackupRestoreIntoAFreshCluster backs up one cluster's settings,
// account-level settings and users, restores them into a second, fresh
// cluster (its own MariaDB and network), and finds them there: the users'
// passwords work at its gateway and its network has the profile. A wrong
// password and a flipped byte change nothing.
func TestBackupRestoreIntoAFreshCluster(t *testing.T) {
	cl1, g1 := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 1, Shards: 1}, "")
	a1 := &accountClient{t: t, cl: cl1, g: g1, token: g1.loginAdmin()}
	const about = "Restored from a backup"
	img := testPNG(t, 24, color.RGBA{0, 160, 0, 255})
	bp := businessProfile{Address: "2 High St", Description: "Backups", Email: "ops@example.com",
		Vertical: "Professional Services", Websites: []string{"https://ops.example.com"}}
	a1.call("PATCH", "/v1/settings/profile/about", fmt.Sprintf(`{"text":%q}`, about), 200)
	a1.uploadRaw(img, "image/png")
	photo, _ := a1.photo()
	b, _ := json.Marshal(bp)
	a1.call("POST", "/v1/settings/business/profile", string(b), 200)
	a1.call("POST", "/v1/settings/account/two-step", `{"pin":"246802"}`, 200)
	a1.call("PATCH", "/v1/settings/application", `{"sent_status":true}`, 200)
	a1.call("POST", "/v1/users", `{"username":"alice","password":"Al1ce-passw0rd!","role":"USER"}`, http.StatusCreated)
	// Rows other areas keep: the webhook CA goes into backups (set through
	// the API, as an operator would), the gateway's own certificate and
	// key do not.
	if st, out := g1.do("POST", "/v1/certificates/webhooks/ca", certPEM(newTestCA(t, "backup webhook CA", nil).cert), textHeaders(a1.token)); st != 200 {
		t.Fatalf("setting the webhook CA: HTTP %d %s", st, out)
	}
	if _, err := cl1.SQL.Exec(`INSERT INTO settings (name, value, updated_at) VALUES
		('certificates.external', '{"key":"cluster1 private key"}', NOW(6))`); err != nil {
		t.Fatal(err)
	}

	const password = "backup-Passw0rd"
	var doc struct {
		Settings struct {
			Data string `json:"data"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(a1.call("POST", "/v1/settings/backup", fmt.Sprintf(`{"password":%q}`, password), 200)), &doc); err != nil || doc.Settings.Data == "" {
		t.Fatalf("backup answer: %v %+v", err, doc)
	}
	data := doc.Settings.Data
	if strings.Contains(data, "cluster1") {
		t.Fatal("the backup is not encrypted")
	}

	cl2, g2 := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 1, Shards: 1}, "")
	a2 := &accountClient{t: t, cl: cl2, g: g2, token: g2.loginAdmin()}
	if _, err := cl2.SQL.Exec(`INSERT INTO settings (name, value, updated_at) VALUES ('certificates.external', '{"key":"cluster2 private key"}', NOW(6))`); err != nil {
		t.Fatal(err)
	}

	// A wrong password and a damaged backup change nothing.
	raw, _ := base64.StdEncoding.DecodeString(data)
	raw[len(raw)/2] ^= 0x01
	flipped := base64.StdEncoding.EncodeToString(raw)
	before, netBefore := readDBState(t, cl2.SQL), a2.network()
	for name, body := range map[string]string{
		"wrong password":  fmt.Sprintf(`{"password":"another-Passw0rd","data":%q}`, data),
		"a flipped byte":  fmt.Sprintf(`{"password":%q,"data":%q}`, password, flipped),
		"not base64":      fmt.Sprintf(`{"password":%q,"data":"%s!"}`, password, data[:40]),
		"a truncated one": fmt.Sprintf(`{"password":%q,"data":%q}`, password, data[:len(data)/2]),
	} {
		st, out := g2.do("POST", "/v1/settings/restore", body, jsonHeaders(bearer(a2.token)))
		if st != 400 || errCode(out) != apierror.ParameterInvalid {
			t.Errorf("restore with %s: HTTP %d %s, want 400 with 1009", name, st, out)
		}
	}
	if after := readDBState(t, cl2.SQL); !reflect.DeepEqual(after, before) {
		t.Errorf("refused restores changed the database:\n%+v\n%+v", before, after)
	}
	if after := a2.network(); !reflect.DeepEqual(after, netBefore) {
		t.Errorf("refused restores changed the network: %+v -> %+v", netBefore, after)
	}

	start := time.Now()
	a2.call("POST", "/v1/settings/restore", fmt.Sprintf(`{"password":%q,"data":%q}`, password, data), 200)
	t.Logf("restore took %v", time.Since(start).Round(time.Millisecond))

	// The users: the admin's token was issued for another password hash,
	// so it was revoked; the restored passwords work.
	st, body := g2.do("POST", "/v1/users/login", "", basic("alice", "Al1ce-passw0rd!"))
	if st != 200 {
		t.Errorf("alice's login at the restored cluster: HTTP %d %s", st, body)
	}
	var token string
	cl2.Eventually(5*time.Second, "the restored admin logs in", func() error {
		st, body := g2.do("POST", "/v1/users/login", "", basic("admin", adminPassword))
		if st != 200 {
			return fmt.Errorf("HTTP %d %s", st, body)
		}
		token = tokenOf(t, body)
		return nil
	})
	a2.token = token
	s1, s2 := readDBState(t, cl1.SQL), readDBState(t, cl2.SQL)
	for u, v := range s1.Users {
		if s2.Users[u] != v {
			t.Errorf("user %s after the restore: %q, want %q", u, s2.Users[u], v)
		}
	}
	if len(s2.Users) != len(s1.Users) {
		t.Errorf("users after the restore %v, want %v", s2.Users, s1.Users)
	}
	for name, v := range s1.Settings {
		switch {
		case name == "certificates.external":
			if s2.Settings[name] != `{"key":"cluster2 private key"}` {
				t.Errorf("the gateway's own key was replaced: %q", s2.Settings[name])
			}
		case name == "account.profile.photo":
			// The link is the new network's.
		case s2.Settings[name] != v:
			t.Errorf("setting %s after the restore: %.80q, want %.80q", name, s2.Settings[name], v)
		}
	}

	// Through the gateway and at the second cluster's network.
	var app struct {
		Settings struct {
			Application map[string]any `json:"application"`
		} `json:"settings"`
	}
	json.Unmarshal([]byte(a2.call("GET", "/v1/settings/application", "", 200)), &app)
	if app.Settings.Application["sent_status"] != true {
		t.Errorf("application settings after the restore: sent_status %v", app.Settings.Application["sent_status"])
	}
	if got := a2.about(); got != about {
		t.Errorf("about after the restore %q, want %q", got, about)
	}
	if got := a2.business(); !reflect.DeepEqual(got, bp) {
		t.Errorf("business profile after the restore %+v, want %+v", got, bp)
	}
	if got, _ := a2.photo(); !bytes.Equal(got, photo) {
		t.Errorf("photo after the restore: %d bytes, want the first cluster's %d", len(got), len(photo))
	}
	link := a2.photoLink()
	if !strings.Contains(link, cl2.SimnetHTTP) {
		t.Errorf("photo link %q is not the second network's (%s)", link, cl2.SimnetHTTP)
	}
	if got := fetch(t, link); !bytes.Equal(got, photo) {
		t.Errorf("the second network's photo link serves %d bytes, want %d", len(got), len(photo))
	}
	n := a2.network()
	if n.About != about || !reflect.DeepEqual(n.BusinessProfile, bp) || !n.TwoStep || n.Photo == nil || n.Photo.Size != len(photo) {
		t.Errorf("the second cluster's network after the restore: %+v", n)
	}
}
