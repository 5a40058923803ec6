package caddymodule

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// fromSource returns a copy of g whose requests leave from the loopback
// address ip (any 127.0.0.0/8 address works on Linux), so a test can be
// several clients to the per-IP login limit.
func (g *gateway) fromSource(ip string) *gateway {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c := *g
	c.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64}}
	return &c
}

// expect checks one answer: HTTP status and, when code is not 0, the
// original's error code in the original's error shape.
func expect(t *testing.T, what string, st int, body string, wantStatus, wantCode int) {
	t.Helper()
	if st != wantStatus {
		t.Errorf("%s: HTTP %d %s, want %d (code %d)", what, st, body, wantStatus, wantCode)
		return
	}
	if wantCode == 0 {
		return
	}
	var doc apierror.Body
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Errors) != 1 {
		t.Errorf("%s: body %s is not the original's error document", what, body)
		return
	}
	e := doc.Errors[0]
	if e.Code != wantCode || e.Title == "" || e.Details == "" {
		t.Errorf("%s: error %+v, want code %d with a title and details", what, e, wantCode)
	}
}

func jsonHeaders(h map[string]string) map[string]string {
	h["Content-Type"] = "application/json"
	return h
}

// TestFirstLoginAndPasswordRules walks the original's first login: the
// default admin/secret works only to set a new password (1024 otherwise),
// the new password must follow the rules, the token lasts 7 days, and what
// MySQL holds is a bcrypt hash and token hashes, never the secrets.
func TestFirstLoginAndPasswordRules(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.addNode("coreapp")
	n.shard.Store(0)
	c.assign(0, n, 1)
	g := c.startGateway("")

	st, body := g.do("POST", "/v1/users/login", "", nil)
	expect(t, "login without credentials", st, body, 401, apierror.AccessDenied)
	st, body = g.do("POST", "/v1/users/login", "", basic("admin", "wrong"))
	expect(t, "login with a wrong password", st, body, 401, apierror.AccessDenied)
	st, body = g.do("POST", "/v1/users/login", "", basic("nobody", "secret"))
	expect(t, "login as an unknown user", st, body, 401, apierror.AccessDenied)
	st, body = g.do("GET", "/v1/users/login", "", basic("admin", "secret"))
	expect(t, "GET login", st, body, 405, apierror.RequestNotValid)

	st, body = g.do("POST", "/v1/users/login", "", basic("admin", "secret"))
	expect(t, "first login without new_password", st, body, 401, apierror.PasswordChangeRequired)
	st, body = g.do("POST", "/v1/users/login", `{}`, basic("admin", "secret"))
	expect(t, "first login with an empty object", st, body, 401, apierror.PasswordChangeRequired)

	for _, tc := range []struct{ why, pw string }{
		{"7 characters", "Ab1!xyz"},
		{"65 characters", "Ab1!" + strings.Repeat("x", 61)},
		{"no digit", "Abcdefg!"},
		{"no upper-case letter", "abcdef1!"},
		{"no lower-case letter", "ABCDEF1!"},
		{"no special character", "Abcdefg1"},
		{"the same as the old one", "secret"},
	} {
		st, body := g.do("POST", "/v1/users/login", `{"new_password":"`+tc.pw+`"}`, basic("admin", "secret"))
		expect(t, "new_password with "+tc.why, st, body, 400, apierror.ParameterInvalid)
	}
	st, body = g.do("POST", "/v1/users/login", `{"new_pasword":"`+adminPassword+`"}`, basic("admin", "secret"))
	expect(t, "misspelt new_password", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("POST", "/v1/users/login", `{"new_password":`, basic("admin", "secret"))
	expect(t, "malformed login body", st, body, 400, apierror.RequestNotValid)

	// 64 characters is allowed; then change it again to adminPassword.
	long := "Ab1!" + strings.Repeat("y", 60)
	st, body = g.do("POST", "/v1/users/login", `{"new_password":"`+long+`"}`, basic("admin", "secret"))
	expect(t, "first login with a 64-character password", st, body, 200, 0)
	st, body = g.do("POST", "/v1/users/login", `{"new_password":"`+adminPassword+`"}`, basic("admin", long))
	expect(t, "changing the password at a later login", st, body, 200, 0)
	var doc struct {
		Users []struct {
			Token        string `json:"token"`
			ExpiresAfter string `json:"expires_after"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Users) != 1 {
		t.Fatalf("login answer %s", body)
	}
	token := doc.Users[0].Token
	exp, err := time.Parse("2006-01-02 15:04:05-07:00", doc.Users[0].ExpiresAfter)
	if err != nil {
		t.Fatalf("expires_after %q: %v", doc.Users[0].ExpiresAfter, err)
	}
	if d := time.Until(exp); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour+time.Minute {
		t.Errorf("token valid for %s, want 7 days", d)
	}

	st, body = g.do("POST", "/v1/users/login", "", basic("admin", "secret"))
	expect(t, "login with the replaced default password", st, body, 401, apierror.AccessDenied)
	st, body = g.do("POST", "/v1/users/login", "", basic("admin", adminPassword))
	expect(t, "later login needs no new_password", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users", "", bearer(token))
	expect(t, "GET /v1/users with the token", st, body, 200, 0)
	if !strings.Contains(body, `"username":"admin"`) || !strings.Contains(body, `"role":"ADMIN"`) {
		t.Errorf("GET /v1/users: %s, want admin as ADMIN", body)
	}

	// What MySQL holds: a bcrypt hash, and only hashes of tokens.
	var hash string
	if err := c.db.QueryRow(`SELECT password_hash FROM users WHERE username = 'admin'`).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if _, err := bcrypt.Cost([]byte(hash)); err != nil || bcrypt.CompareHashAndPassword([]byte(hash), []byte(adminPassword)) != nil {
		t.Errorf("stored password %q is not a bcrypt hash of the password", hash)
	}
	var raw int
	h := hashToken(token)
	if err := c.db.QueryRow(`SELECT COUNT(*) FROM tokens WHERE token_hash = ? OR token_hash = ?`, token, hex.EncodeToString(h[:])).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if raw != 1 {
		t.Errorf("tokens table: %d rows match the token or its hash, want exactly the hash", raw)
	}
}

// TestRolesAndTokens covers /v1/users CRUD with ADMIN and USER roles,
// access denied (1005) for a USER on admin-only routes, and revocation:
// logout, password change, deletion and a revocation made by another
// gateway (straight in MySQL) all stop a token.
func TestRolesAndTokens(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.addNode("coreapp")
	n.shard.Store(0)
	c.assign(0, n, 1)
	master := c.addNode("master")
	master.primary.Store(true)
	c.setPrimaryMaster(master)
	g := c.startGateway("token_cache 300ms")
	admin := g.loginAdmin()
	ah := func() map[string]string { return jsonHeaders(bearer(admin)) }

	st, body := g.do("GET", "/v1/users", "", nil)
	expect(t, "no token", st, body, 401, apierror.AccessDenied)
	st, body = g.do("GET", "/v1/users", "", bearer("not-a-token"))
	expect(t, "unknown token", st, body, 401, apierror.AccessDenied)
	st, body = g.do("GET", "/v1/users", "", map[string]string{"Authorization": "Basic " + admin})
	expect(t, "basic auth on an API route", st, body, 401, apierror.AccessDenied)

	const alicePW, bobPW = "Al1ce-Passw0rd", "B0b-Passw0rd!"
	st, body = g.do("POST", "/v1/users", `{"username":"alice","password":"`+alicePW+`","role":"USER"}`, ah())
	expect(t, "create alice", st, body, 201, 0)
	st, body = g.do("POST", "/v1/users", `{"username":"bob","password":"`+bobPW+`","role":"ROLE_ADMIN"}`, ah())
	expect(t, "create bob as ADMIN", st, body, 201, 0)
	for _, tc := range []struct {
		what, body string
		status     int
		code       int
	}{
		{"duplicate user", `{"username":"alice","password":"` + alicePW + `"}`, 400, apierror.ParameterInvalid},
		{"weak password", `{"username":"carol","password":"password"}`, 400, apierror.ParameterInvalid},
		{"missing username", `{"password":"` + alicePW + `"}`, 400, apierror.ParameterMissing},
		{"missing password", `{"username":"carol"}`, 400, apierror.ParameterMissing},
		{"bad role", `{"username":"carol","password":"` + alicePW + `","role":"ROOT"}`, 400, apierror.ParameterInvalid},
		{"bad username", `{"username":"car ol","password":"` + alicePW + `"}`, 400, apierror.ParameterInvalid},
		{"not JSON", `username=carol`, 400, apierror.RequestNotValid},
		{"no body", ``, 400, apierror.RequestNotValid},
	} {
		st, body := g.do("POST", "/v1/users", tc.body, ah())
		expect(t, "create user: "+tc.what, st, body, tc.status, tc.code)
	}
	st, body = g.do("GET", "/v1/users", "", ah())
	expect(t, "list users", st, body, 200, 0)
	for _, want := range []string{`{"username":"admin","role":"ADMIN","ROLES":"ROLE_ADMIN"}`, `{"username":"alice","role":"USER","ROLES":"ROLE_USER"}`, `{"username":"bob","role":"ADMIN","ROLES":"ROLE_ADMIN"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /v1/users: %s lacks %s", body, want)
		}
	}
	if strings.Contains(body, "carol") {
		t.Errorf("a refused create left a user behind: %s", body)
	}

	// A user made by an ADMIN logs in without a forced change.
	st, body = g.do("POST", "/v1/users/login", "", basic("alice", alicePW))
	expect(t, "alice logs in", st, body, 200, 0)
	alice := tokenOf(t, body)
	uh := func() map[string]string { return jsonHeaders(bearer(alice)) }

	// A USER sends messages and reads itself, and is refused every
	// admin-only route with 1005 before anything reaches a node.
	st, body = g.do("POST", "/v1/messages", messageBody("15551234567"), uh())
	expect(t, "USER sends a message", st, body, 201, 0)
	st, body = g.do("GET", "/v1/users/alice", "", uh())
	expect(t, "USER reads itself", st, body, 200, 0)
	masterBefore := len(master.requests()) + int(master.refused.Load())
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/users", ""},
		{"POST", "/v1/users", `{"username":"mallory","password":"M4llory-Pw!"}`},
		{"GET", "/v1/users/admin", ""},
		{"PUT", "/v1/users/admin", `{"password":"Hack3d-Passw0rd!"}`},
		{"DELETE", "/v1/users/bob", ""},
		{"DELETE", "/v1/users/alice", ""},
		{"PUT", "/v1/users/alice", `{"role":"ADMIN"}`},
		{"GET", "/v1/settings/application", ""},
		{"PATCH", "/v1/settings/application", `{"unhealthy_interval":1}`},
		{"POST", "/v1/account", `{"cc":"1","phone_number":"5550000"}`},
		{"POST", "/v1/account/shards", `{"shards":2}`},
		{"POST", "/v1/support", `{}`},
	} {
		st, body := g.do(tc.method, tc.path, tc.body, uh())
		expect(t, "USER "+tc.method+" "+tc.path, st, body, 403, apierror.AccessDenied)
	}
	if got := len(master.requests()) + int(master.refused.Load()); got != masterBefore {
		t.Errorf("refused USER requests reached the master (%d requests)", got-masterBefore)
	}
	st, body = g.do("GET", "/v1/users", "", ah())
	expect(t, "ADMIN GET /v1/users", st, body, 200, 0)
	if strings.Contains(body, "mallory") {
		t.Errorf("a USER created a user: %s", body)
	}
	var role string
	c.db.QueryRow(`SELECT role FROM users WHERE username = 'alice'`).Scan(&role)
	if role != roleUser {
		t.Errorf("alice's role is %q after a USER tried to change it", role)
	}
	// The ADMIN reaches the same master routes.
	st, body = g.do("GET", "/v1/settings/application", "", ah())
	expect(t, "ADMIN GET settings", st, body, 200, 0)

	// An ADMIN promotes and demotes; the role change applies to the
	// user's existing token at once.
	st, body = g.do("PUT", "/v1/users/alice", `{"role":"ADMIN"}`, ah())
	expect(t, "ADMIN makes alice ADMIN", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users", "", uh())
	expect(t, "alice, now ADMIN, lists users", st, body, 200, 0)
	st, body = g.do("PUT", "/v1/users/alice", `{"role":"USER"}`, ah())
	expect(t, "ADMIN makes alice USER again", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users", "", uh())
	expect(t, "alice, USER again, lists users", st, body, 403, apierror.AccessDenied)
	st, body = g.do("PUT", "/v1/users/admin", `{"role":"USER"}`, ah())
	expect(t, "demoting the built-in admin", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("GET", "/v1/users/nobody", "", ah())
	expect(t, "GET an unknown user", st, body, 404, apierror.NotFound)
	st, body = g.do("DELETE", "/v1/users/nobody", "", ah())
	expect(t, "DELETE an unknown user", st, body, 404, apierror.NotFound)

	// Changing one's own password keeps the caller's token and revokes
	// the others.
	st, body = g.do("POST", "/v1/users/login", "", basic("alice", alicePW))
	expect(t, "alice logs in a second time", st, body, 200, 0)
	alice2 := tokenOf(t, body)
	const alicePW2 = "Al1ce-N3w-Passw0rd"
	st, body = g.do("PUT", "/v1/users/alice", `{"password":"weak"}`, uh())
	expect(t, "alice sets a weak password", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("PUT", "/v1/users/alice", `{"password":"`+alicePW2+`"}`, uh())
	expect(t, "alice changes her password", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users/alice", "", uh())
	expect(t, "the token that changed the password", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users/alice", "", bearer(alice2))
	expect(t, "alice's other token after the change", st, body, 401, apierror.AccessDenied)
	st, body = g.do("POST", "/v1/users/login", "", basic("alice", alicePW))
	expect(t, "alice's old password", st, body, 401, apierror.AccessDenied)

	// Logout revokes the token.
	st, body = g.do("POST", "/v1/users/logout", "", uh())
	expect(t, "alice logs out", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users/alice", "", uh())
	expect(t, "alice's token after logout", st, body, 401, apierror.AccessDenied)

	// A revocation made elsewhere (another gateway, an operator) reaches
	// this gateway's token cache within token_cache (300ms here).
	st, body = g.do("POST", "/v1/users/login", "", basic("bob", bobPW))
	expect(t, "bob logs in", st, body, 200, 0)
	bob := tokenOf(t, body)
	st, body = g.do("GET", "/v1/users", "", bearer(bob))
	expect(t, "bob, ADMIN, lists users", st, body, 200, 0)
	bh := hashToken(bob)
	c.exec(`UPDATE tokens SET revoked = 1 WHERE token_hash = ?`, hex.EncodeToString(bh[:]))
	revokedAt := time.Now()
	for {
		st, _ := g.do("GET", "/v1/users", "", bearer(bob))
		if st == 401 {
			break
		}
		if time.Since(revokedAt) > 2*time.Second {
			t.Fatalf("a token revoked in MySQL still works after %s (token_cache 300ms)", time.Since(revokedAt))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// An expired token stops too.
	st, body = g.do("POST", "/v1/users/login", "", basic("bob", bobPW))
	expect(t, "bob logs in again", st, body, 200, 0)
	bob = tokenOf(t, body)
	bh = hashToken(bob)
	c.exec(`UPDATE tokens SET expires_at = NOW(6) - INTERVAL 1 SECOND WHERE token_hash = ?`, hex.EncodeToString(bh[:]))
	time.Sleep(400 * time.Millisecond)
	st, body = g.do("GET", "/v1/users", "", bearer(bob))
	expect(t, "an expired token", st, body, 401, apierror.AccessDenied)

	// Deleting a user ends its tokens.
	st, body = g.do("POST", "/v1/users/login", "", basic("alice", alicePW2))
	expect(t, "alice logs in again", st, body, 200, 0)
	alice = tokenOf(t, body)
	st, body = g.do("DELETE", "/v1/users/admin", "", ah())
	expect(t, "deleting the built-in admin", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("DELETE", "/v1/users/alice", "", ah())
	expect(t, "ADMIN deletes alice", st, body, 200, 0)
	st, body = g.do("GET", "/v1/users/alice", "", bearer(alice))
	expect(t, "a deleted user's token", st, body, 401, apierror.AccessDenied)
	st, body = g.do("POST", "/v1/users/login", "", basic("alice", alicePW2))
	expect(t, "a deleted user logs in", st, body, 401, apierror.AccessDenied)
}

// TestAPIKey checks "Authorization: Apikey" when WA_API_KEY is set: it opens
// health, metrics and stats and nothing else; a wrong key is refused; and a
// gateway started without WA_API_KEY refuses every key.
func TestAPIKey(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.addNode("coreapp")
	n.shard.Store(0)
	n.connected.Store(true)
	c.assign(0, n, 1)
	master := c.addNode("master")
	master.primary.Store(true)
	c.setPrimaryMaster(master)
	g := c.startGateway("")
	key := map[string]string{"Authorization": "Apikey " + testAPIKey}

	for _, p := range []string{"/v1/health", "/metrics", "/v1/stats/app", "/v1/stats/db"} {
		st, body := g.do("GET", p, "", key)
		expect(t, "Apikey GET "+p, st, body, 200, 0)
		st, body = g.do("GET", p, "", map[string]string{"Authorization": "Apikey wrong-key"})
		expect(t, "wrong Apikey GET "+p, st, body, 401, apierror.AccessDenied)
		st, body = g.do("GET", p, "", nil)
		expect(t, "no credentials GET "+p, st, body, 401, apierror.AccessDenied)
	}
	_, body := g.do("GET", "/metrics", "", key)
	if !strings.Contains(body, "multiconnect_gateway_requests_total") {
		t.Errorf("/metrics lacks the module's series:\n%s", tailString(body, 1000))
	}
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/v1/messages", messageBody("15551234567")},
		{"GET", "/v1/users", ""},
		{"POST", "/v1/users/logout", ""},
		{"GET", "/v1/settings/application", ""},
		{"POST", "/v1/contacts", `{"contacts":["+15551234567"]}`},
	} {
		st, body := g.do(tc.method, tc.path, tc.body, key)
		expect(t, "Apikey "+tc.method+" "+tc.path, st, body, 403, apierror.AccessDenied)
	}
	if got := len(n.requests()); got != 0 { // stats go to the master; the rest was refused
		t.Errorf("the coreapp received %d requests, want none", got)
	}

	// A second gateway on the same cluster without WA_API_KEY.
	admin := g.loginAdmin()
	g2 := c.startGatewayEnv("", []string{"WA_API_KEY="}, bearer(admin))
	for _, p := range []string{"/v1/health", "/metrics"} {
		st, body := g2.do("GET", p, "", key)
		expect(t, "Apikey without WA_API_KEY GET "+p, st, body, 401, apierror.AccessDenied)
		st, body = g2.do("GET", p, "", bearer(admin))
		expect(t, "bearer token GET "+p, st, body, 200, 0)
	}
}

// TestLoginRateLimit checks the original's limit: 30 failed logins per hour
// from one IP, then 429 (1015) for every login from it, the right password
// included; other addresses are unaffected, a forged X-Forwarded-For does
// not help, and parallel guesses cannot slip past the count.
func TestLoginRateLimit(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.addNode("coreapp")
	n.shard.Store(0)
	c.assign(0, n, 1)
	g := c.startGateway("")
	g.loginAdmin() // from 127.0.0.1

	a := g.fromSource("127.0.0.2")
	for i := 1; i <= 30; i++ {
		st, body := a.do("POST", "/v1/users/login", "", basic("admin", "guess-"+strconv.Itoa(i)))
		expect(t, "failed login "+strconv.Itoa(i), st, body, 401, apierror.AccessDenied)
	}
	st, body := a.do("POST", "/v1/users/login", "", basic("admin", "guess-31"))
	expect(t, "31st failed login", st, body, 429, apierror.TooManyRequests)
	req, _ := http.NewRequest("POST", a.url+"/v1/users/login", nil)
	req.SetBasicAuth("admin", adminPassword)
	resp, err := a.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 {
		t.Errorf("the right password from a limited address: HTTP %d, want 429", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 3000 || ra > 3601 {
		t.Errorf("Retry-After %q, want about an hour", resp.Header.Get("Retry-After"))
	}
	h := basic("admin", adminPassword)
	h["X-Forwarded-For"] = "198.51.100.7"
	st, body = a.do("POST", "/v1/users/login", "", h)
	expect(t, "limited address with a forged X-Forwarded-For", st, body, 429, apierror.TooManyRequests)

	// Another address still logs in.
	st, body = g.do("POST", "/v1/users/login", "", basic("admin", adminPassword))
	expect(t, "login from another address", st, body, 200, 0)

	// 45 parallel guesses from a fresh address: at most 30 are judged,
	// the rest are refused with 429.
	b := g.fromSource("127.0.0.3")
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 45; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, _ := b.do("POST", "/v1/users/login", "", basic("admin", "parallel-"+strconv.Itoa(i)))
			mu.Lock()
			counts[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[401] > 30 || counts[401]+counts[429] != 45 {
		t.Errorf("45 parallel bad logins: %v, want at most 30 401s and the rest 429", counts)
	}
	st, body = b.do("POST", "/v1/users/login", "", basic("admin", adminPassword))
	if counts[401] == 30 {
		expect(t, "right password after 30 parallel failures", st, body, 429, apierror.TooManyRequests)
	}
}

// TestLoginLimiterWindow checks the sliding window on the limiter itself,
// with a fake clock: failures older than the window stop counting, and a
// successful login never counts.
func TestLoginLimiterWindow(t *testing.T) {
	l := newLoginLimiter()
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 3; i++ {
		if _, ok := l.begin("ip", 3, time.Hour, t0.Add(time.Duration(i)*time.Minute)); !ok {
			t.Fatalf("attempt %d refused", i)
		}
		l.end("ip", true, t0.Add(time.Duration(i)*time.Minute))
	}
	wait, ok := l.begin("ip", 3, time.Hour, t0.Add(10*time.Minute))
	if ok || wait != 50*time.Minute {
		t.Errorf("4th attempt: ok=%v wait=%s, want refused for 50m", ok, wait)
	}
	if _, ok := l.begin("ip", 3, time.Hour, t0.Add(time.Hour)); !ok {
		t.Errorf("attempt after the first failure left the window refused")
	} else {
		l.end("ip", false, t0.Add(time.Hour))
	}
	for i := 0; i < 10; i++ {
		if _, ok := l.begin("other", 3, time.Hour, t0); !ok {
			t.Fatalf("successful logins counted as failures")
		}
		l.end("other", false, t0)
	}
	l.sweep(t0.Add(48 * time.Hour))
	if l.m.len() != 0 {
		t.Errorf("sweep kept %d idle addresses", l.m.len())
	}
}

// TestLoginLimiterFloodOfAddresses fills the limiter with maxTrackedIPs
// addresses that all failed recently, then times 20,000 more new ones: a
// new address must cost O(1), not a sweep of every tracked one, memory
// stays bounded, and an address that keeps failing during the flood stays
// limited.
func TestLoginLimiterFloodOfAddresses(t *testing.T) {
	l := newLoginLimiter()
	now := time.Unix(1_700_000_000, 0)
	attempt := func(ip string) bool {
		_, ok := l.begin(ip, 3, time.Hour, now)
		if ok {
			l.end(ip, true, now)
		}
		return ok
	}
	for i := 0; i < maxTrackedIPs; i++ {
		attempt(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255))
	}
	for i := 0; i < 3; i++ {
		attempt("attacker")
	}
	const more = 20000
	start := time.Now()
	limited := 0
	for i := 0; i < more; i++ {
		attempt(fmt.Sprintf("11.%d.%d.%d", i>>16, i>>8&255, i&255))
		if i%100 == 0 && !attempt("attacker") {
			limited++
		}
	}
	took := time.Since(start)
	t.Logf("%d new addresses with %d tracked took %s (%s each); %d addresses tracked", more, maxTrackedIPs, took, took/more, l.m.len())
	if took > 2*time.Second {
		t.Errorf("%d new addresses took %s: a new address costs a sweep", more, took)
	}
	if l.m.len() > maxTrackedIPs {
		t.Errorf("%d addresses tracked, more than %d", l.m.len(), maxTrackedIPs)
	}
	if limited != more/100 {
		t.Errorf("the attacker was refused %d of %d times during the flood", limited, more/100)
	}
}
