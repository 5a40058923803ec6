package clustertest

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// netRegistration is one number's registration as the simulated network
// lists it (GET /v1/registrations).
type netRegistration struct {
	CC          string `json:"cc"`
	PhoneNumber string `json:"phone_number"`
	Method      string `json:"method"`
	VName       string `json:"vname"`
	Code        string `json:"code"`
	Verified    bool   `json:"verified"`
	Requests    int    `json:"requests"`
}

func (c *Cluster) netRegistrations() []netRegistration {
	c.T.Helper()
	var out struct {
		Registrations []netRegistration `json:"registrations"`
	}
	if err := c.SimnetJSON("/v1/registrations", &out); err != nil {
		c.T.Fatalf("simnet registrations: %v", err)
	}
	return out.Registrations
}

// accountRow is the account table's row for a number ("" when none).
func (c *Cluster) accountRow(cc, phone string) (state, waID string) {
	c.T.Helper()
	var id *string
	err := c.SQL.QueryRow(`SELECT state, wa_id FROM account WHERE cc = ? AND phone_number = ?`, cc, phone).Scan(&state, &id)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		c.T.Fatal(err)
	}
	if id != nil {
		waID = *id
	}
	return state, waID
}

// settingsWAID is the wa_id GET /v1/settings/application shows, "" if none.
func (c *Cluster) settingsWAID(addr string) string {
	c.T.Helper()
	code, body, err := c.Internal("GET", addr, "/v1/settings/application", "")
	if err != nil || code != 200 {
		c.T.Fatalf("GET settings: %d %s %v", code, body, err)
	}
	var doc struct {
		Settings struct {
			Application map[string]any `json:"application"`
		} `json:"settings"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		c.T.Fatal(err)
	}
	if _, ok := doc.Settings.Application["heartbeat_interval"]; !ok {
		c.T.Fatalf("settings lost their fields: %s", body)
	}
	id, _ := doc.Settings.Application["wa_id"].(string)
	return id
}

// Registration end to end on the real cluster: the primary master asks the
// network for a code through its own transport plugin, the code is read
// from the network (standing in for the SMS), a wrong code changes
// nothing, the right one registers the account and its wa_id shows in the
// settings; the master's plugin is killed on the way and replaced. Bad
// input and a secondary master store nothing.
func TestRegistration(t *testing.T) {
	c := New(t, Options{Coreapps: 1})
	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	var secondary string
	for _, m := range c.Masters {
		if m.Addr != primary {
			secondary = m.Addr
		}
	}
	post := func(addr, path, body string) (int, []byte) {
		t.Helper()
		code, out, err := c.Internal("POST", addr, path, body)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		return code, out
	}
	const cc, phone = "1", "6315551234"
	cert := base64.StdEncoding.EncodeToString([]byte("Acme Widgets"))
	good := fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"sms","cert":%q}`, cc, phone, cert)

	// Bad input: the original's codes, nothing stored, nothing asked.
	for _, bad := range []struct {
		body   string
		status int
		code   int
	}{
		{fmt.Sprintf(`{"phone_number":%q,"method":"sms","cert":%q}`, phone, cert), 400, 1008},
		{fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"fax","cert":%q}`, cc, phone, cert), 400, 1009},
		{fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"sms","cert":"%%%%not base64"}`, cc, phone), 400, 1009},
		{fmt.Sprintf(`{"cc":"1234","phone_number":%q,"method":"sms","cert":%q}`, phone, cert), 400, 1009},
		// Valid base64, but the network cannot read a name from it.
		{fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"sms","cert":%q}`, cc, phone, base64.StdEncoding.EncodeToString([]byte{0xff, 0xfe})), 400, 1009},
	} {
		status, out := post(primary, "/v1/account", bad.body)
		if status != bad.status || errorCode(out) != bad.code {
			t.Errorf("POST /v1/account %s: %d %s, want %d with %d", bad.body, status, out, bad.status, bad.code)
		}
	}
	if n := c.countRows("account"); n != 0 {
		t.Fatalf("bad input stored %d account rows", n)
	}
	if regs := c.netRegistrations(); len(regs) != 0 {
		t.Fatalf("bad input reached the network: %+v", regs)
	}
	// Verify before any request: nothing in progress.
	if status, out := post(primary, "/v1/account/verify", `{"code":"123456"}`); status != 404 || errorCode(out) != 1006 {
		t.Errorf("verify with nothing in progress: %d %s, want 404 with 1006", status, out)
	}
	// A secondary master does not register.
	for _, path := range []string{"/v1/account", "/v1/account/verify"} {
		body := good
		if path == "/v1/account/verify" {
			body = `{"code":"123456"}`
		}
		if status, out := post(secondary, path, body); status != 503 || errorCode(out) != 1017 {
			t.Errorf("secondary master %s: %d %s, want 503 with 1017", path, status, out)
		}
	}
	if n := c.countRows("account"); n != 0 || len(c.netRegistrations()) != 0 {
		t.Fatalf("refused requests stored %d rows or reached the network", n)
	}

	// The code request: 202 with the certificate's name.
	status, out := post(primary, "/v1/account", good)
	var accepted struct {
		Account []struct {
			VName string `json:"vname"`
		} `json:"account"`
	}
	if status != 202 || json.Unmarshal(out, &accepted) != nil || len(accepted.Account) != 1 || accepted.Account[0].VName != "Acme Widgets" {
		t.Fatalf("POST /v1/account: %d %s, want 202 with vname Acme Widgets", status, out)
	}
	if state, _ := c.accountRow(cc, phone); state != "pending" {
		t.Fatalf("account state %q after the code request, want pending", state)
	}
	regs := c.netRegistrations()
	if len(regs) != 1 || regs[0].CC != cc || regs[0].PhoneNumber != phone || regs[0].Method != "sms" || len(regs[0].Code) != 6 || regs[0].Verified {
		t.Fatalf("the network's registrations: %+v", regs)
	}
	code := regs[0].Code

	// A wrong code: 1009, still not registered.
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	if status, out := post(primary, "/v1/account/verify", fmt.Sprintf(`{"code":%q}`, wrong)); status != 400 || errorCode(out) != 1009 {
		t.Errorf("wrong code: %d %s, want 400 with 1009", status, out)
	}
	if state, id := c.accountRow(cc, phone); state != "pending" || id != "" {
		t.Errorf("after a wrong code: state %q wa_id %q", state, id)
	}
	if id := c.settingsWAID(primary); id != "" {
		t.Errorf("wa_id %q before registration", id)
	}

	// The master's plugin is its child; kill it like a crash would.
	master := c.MasterByAddr(primary)
	plugins := master.Children()
	if len(plugins) != 1 {
		t.Fatalf("primary master has children %v, want its one transport plugin", plugins)
	}
	if err := syscall.Kill(plugins[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// No waiting: the call may find the plugin dead or die with it, and
	// must go through a new plugin either way.
	// The right code: 201, through a new plugin.
	if status, out := post(primary, "/v1/account/verify", fmt.Sprintf(`{"code":%q}`, code)); status != 201 {
		t.Fatalf("right code: %d %s, want 201", status, out)
	}
	if n := strings.Count(master.Log(), "transport plugin started"); n != 2 {
		t.Errorf("the master started its plugin %d times, want 2 (first use, after the kill)", n)
	}
	if now := master.Children(); len(now) != 1 || now[0] == plugins[0] {
		t.Errorf("after the restart the master's children are %v (the killed plugin was %d)", now, plugins[0])
	}
	if state, id := c.accountRow(cc, phone); state != "registered" || id != cc+phone {
		t.Errorf("after the right code: state %q wa_id %q", state, id)
	}
	if regs := c.netRegistrations(); len(regs) != 1 || !regs[0].Verified {
		t.Errorf("the network did not record the verification: %+v", regs)
	}
	if id := c.settingsWAID(primary); id != "16315551234" {
		t.Errorf("settings wa_id = %q, want 16315551234", id)
	}

	// Registered: asking again is 201 and sends no new code; there is
	// nothing left to verify.
	if status, out := post(primary, "/v1/account", good); status != 201 {
		t.Errorf("POST /v1/account when registered: %d %s, want 201", status, out)
	}
	if regs := c.netRegistrations(); len(regs) != 1 || regs[0].Requests != 1 {
		t.Errorf("a registered account asked the network again: %+v", regs)
	}
	if status, out := post(primary, "/v1/account/verify", fmt.Sprintf(`{"code":%q}`, code)); status != 404 || errorCode(out) != 1006 {
		t.Errorf("verify when registered: %d %s, want 404 with 1006", status, out)
	}
	if n := c.countRows("account"); n != 1 {
		t.Errorf("%d account rows, want 1", n)
	}
}
