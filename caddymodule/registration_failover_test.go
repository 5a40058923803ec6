package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// netRegistration is the simulated network's record of a number.
type netRegistration struct {
	Code     string `json:"code"`
	Verified bool   `json:"verified"`
	Requests int    `json:"requests"`
}

// TestVerifyWhilePrimaryMasterFreezes freezes the primary master after the
// network verified its code and before it recorded that: its lease lapses,
// the other master takes over, then it wakes, fails its fenced write, and
// must not answer 1017 (which the gateway resends to the new primary,
// where the used code gets 404 "request a new code"). The client must get
// 201, or the documented answer whose recovery records the registration,
// with one code sent in all.
func TestVerifyWhilePrimaryMasterFreezes(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 1, Shards: 1}, "")
	token := g.loginAdmin()
	const cc, phone = "1", "6315557777"
	cert := base64.StdEncoding.EncodeToString([]byte("Acme Widgets"))
	account := fmt.Sprintf(`{"cc":%q,"phone_number":%q,"method":"sms","cert":%q}`, cc, phone, cert)
	netReg := func() netRegistration {
		t.Helper()
		var out struct {
			Registrations []netRegistration `json:"registrations"`
		}
		if err := cl.SimnetJSON("/v1/registrations?cc="+cc+"&phone_number="+phone, &out); err != nil || len(out.Registrations) != 1 {
			t.Fatalf("the network's registration: %+v %v", out, err)
		}
		return out.Registrations[0]
	}
	waID := func() string {
		st, body := g.do("GET", "/v1/settings/application", "", bearer(token))
		var doc struct {
			Settings struct {
				Application map[string]any `json:"application"`
			} `json:"settings"`
		}
		if st != http.StatusOK || json.Unmarshal([]byte(body), &doc) != nil {
			t.Fatalf("GET /v1/settings/application: HTTP %d %s", st, body)
		}
		id, _ := doc.Settings.Application["wa_id"].(string)
		return id
	}

	if st, body := g.do("POST", "/v1/account", account, jsonHeaders(bearer(token))); st != http.StatusAccepted {
		t.Fatalf("POST /v1/account: HTTP %d %s", st, body)
	}
	code := netReg().Code
	primary, err := cl.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	master := cl.MasterByAddr(primary)
	plugins := master.Children()
	if len(plugins) != 1 {
		t.Fatalf("primary master has children %v, want its transport plugin", plugins)
	}
	plugin := plugins[0]

	// Hold the verification in the plugin, freeze the master, let the
	// plugin reach the network, and wake the master only once the other
	// master holds the lease.
	syscall.Kill(plugin, syscall.SIGSTOP)
	type answer struct {
		status int
		body   string
	}
	done := make(chan answer, 1)
	go func() {
		st, body := g.do("POST", "/v1/account/verify", fmt.Sprintf(`{"code":%q}`, code), jsonHeaders(bearer(token)))
		done <- answer{st, body}
	}()
	time.Sleep(300 * time.Millisecond)
	master.Signal(syscall.SIGSTOP)
	syscall.Kill(plugin, syscall.SIGCONT)
	cl.Eventually(10*time.Second, "the network verified the code", func() error {
		if !netReg().Verified {
			return fmt.Errorf("not verified yet")
		}
		return nil
	})
	cl.Eventually(10*time.Second, "another master holds the lease", func() error {
		addr, err := cl.PrimaryMasterAddr()
		if err != nil || addr == primary {
			return fmt.Errorf("primary %q %v", addr, err)
		}
		return nil
	})
	master.Signal(syscall.SIGCONT)
	var a answer
	select {
	case a = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer to the verify 15 s after the master woke")
	}
	t.Logf("verify across the freeze: HTTP %d %s", a.status, a.body)

	switch {
	case a.status == http.StatusCreated:
	case a.status == http.StatusInternalServerError && errCode(a.body) == apierror.GenericError:
		// The documented recovery: the same request again records it.
		if st, body := g.do("POST", "/v1/account", account, jsonHeaders(bearer(token))); st != http.StatusCreated {
			t.Errorf("the documented recovery, POST /v1/account again: HTTP %d %s, want 201", st, body)
		}
	default:
		t.Errorf("verify across the freeze: HTTP %d %s; want 201, or 500 with %d and its recovery", a.status, a.body, apierror.GenericError)
	}
	if id := waID(); id != cc+phone {
		t.Errorf("settings wa_id %q, want %s", id, cc+phone)
	}
	if r := netReg(); r.Requests != 1 || !r.Verified {
		t.Errorf("the network's registration %+v: want verified with one code requested", r)
	}
}
