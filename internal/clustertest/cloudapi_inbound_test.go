package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

// inboundWebhook is the body Meta posts for one inbound text from contact
// (checked against Meta's description).
func inboundWebhook(t testing.TB, contact, wamid string, at time.Time) []byte {
	t.Helper()
	b := []byte(fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"419561257915477","changes":[{"field":"messages",
		"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":%q},
		"contacts":[{"profile":{"name":"Latency"},"wa_id":%q}],
		"messages":[{"from":%q,"id":%q,"timestamp":"%d","type":"text","text":{"body":"latency probe"}}]}}]}]}`,
		CloudPhoneID, contact, contact, wamid, at.Unix()))
	if err := metaspec.ValidateWebhook(b); err != nil {
		t.Fatalf("the test's webhook is not one Meta would send: %v", err)
	}
	return b
}

// arrivals records when each inbound message's callback reached the
// user's webhook, by message id (the wamid).
type arrivals struct {
	mu sync.Mutex
	at map[string]time.Time
}

// startArrivals serves the user's webhook and points the cluster at it.
func startArrivals(t *testing.T, c *Cluster) *arrivals {
	a := &arrivals{at: map[string]time.Time{}}
	url, _ := serveHook(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		b, _ := io.ReadAll(r.Body)
		var p struct {
			Messages []struct {
				ID string `json:"id"`
			} `json:"messages"`
		}
		json.Unmarshal(b, &p)
		a.mu.Lock()
		for _, m := range p.Messages {
			if _, seen := a.at[m.ID]; !seen {
				a.at[m.ID] = now
			}
		}
		a.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q}}`, url))
	return a
}

// of reports when the callback of wamid arrived.
func (a *arrivals) of(wamid string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.at[wamid]
	return at, ok
}

// wait waits until the callback of wamid arrived and says when it did.
func (a *arrivals) wait(c *Cluster, wamid string) time.Time {
	var at time.Time
	c.Eventually(15*time.Second, wamid+" at the user's webhook", func() error {
		var ok bool
		if at, ok = a.of(wamid); !ok {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return at
}

// startCloudInbound starts a Cloud API cluster of two masters, two
// coreapps and shards shards, the user's webhook and a gateway taking
// Meta's webhooks, and waits until an inbound message goes through.
func startCloudInbound(t *testing.T, shards int) (*Cluster, *arrivals, string) {
	gp := FreePort(t)
	c := New(t, Options{CloudAPI: true, Coreapps: 2, Shards: shards,
		GraphArgs: []string{"-webhook-url", fmt.Sprintf("http://127.0.0.1:%d/cloudapi/webhook", gp)}})
	hook := startArrivals(t, c)
	gw := startCloudGateway(t, c, gp)
	time.Sleep(time.Second) // the webhook setting reaches every coreapp (pushed)
	postInbound(t, gw, "15550129999", "wamid.warmup")
	hook.wait(c, "wamid.warmup")
	return c, hook, gw
}

// startCloudGateway runs bin/caddy with the Cloud API webhook route on port.
func startCloudGateway(t *testing.T, c *Cluster, port int) string {
	return startCaddy(t, c, buildCaddyBin(t), "gateway", port, fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
}
:%d {
	multiconnect {
		cloudapi_app_secret %s
		cloudapi_verify_token %s
		cloudapi_phone_number_id %s
	}
}
`, port, CloudAppSecret, CloudVerifyToken, CloudPhoneID))
}

// postInbound posts Meta's signed webhook of one inbound text to the
// gateway, as Meta does, until it is answered 200 (a 503 while the gateway
// loads its shard map is retried, as Meta would).
func postInbound(t *testing.T, gw, contact, wamid string) {
	t.Helper()
	body := inboundWebhook(t, contact, wamid, time.Now())
	hc := &http.Client{Timeout: 10 * time.Second}
	for attempt := 0; ; attempt++ {
		req, _ := http.NewRequest("POST", gw+"/cloudapi/webhook", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Hub-Signature-256", graphtest.Sign(CloudAppSecret, body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("POST /cloudapi/webhook: %v", err)
		}
		rb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return
		case resp.StatusCode == http.StatusServiceUnavailable && attempt < 20:
			time.Sleep(500 * time.Millisecond)
		default:
			t.Fatalf("POST /cloudapi/webhook: HTTP %d %s", resp.StatusCode, rb)
		}
	}
}

// TestCloudAPIInboundLatency times the inbound path of the Cloud API
// transport end to end: a signed webhook POSTed to the gateway's
// /cloudapi/webhook (as Meta does) until the user's webhook receives the
// On-Premises callback of that message, one message at a time, on a
// cluster of two masters, two coreapps and two shards. It prints the
// distribution and fails if any message took a second or more: the
// plugin's reads are woken by the store, and only a lost wake would wait
// for the safety poll (10 s).
//
//	MC_INBOUND_PROBES=100 go test -count=1 -run 'TestCloudAPIInboundLatency$' -v ./internal/clustertest/
func TestCloudAPIInboundLatency(t *testing.T) {
	c, hook, gw := startCloudInbound(t, 2)

	probes := envInt("MC_INBOUND_PROBES", 40)
	var took []time.Duration
	for i := 0; i < probes; i++ {
		contact := fmt.Sprintf("1555012%04d", i) // both shards
		wamid := fmt.Sprintf("wamid.latency-%d-%d", time.Now().UnixNano(), i)
		sent := time.Now()
		postInbound(t, gw, contact, wamid)
		took = append(took, hook.wait(c, wamid).Sub(sent))
		// Spread the probes over the phase of any periodic work.
		time.Sleep(time.Duration(13+i*7%50) * time.Millisecond)
	}
	slices.Sort(took)
	q := func(p float64) time.Duration {
		return took[min(len(took)-1, int(p*float64(len(took))))].Round(100 * time.Microsecond)
	}
	t.Logf("inbound latency, webhook POST to the user's callback, %d probes: min %v p50 %v p90 %v p99 %v max %v",
		len(took), took[0].Round(100*time.Microsecond), q(0.5), q(0.9), q(0.99), took[len(took)-1].Round(100*time.Microsecond))
	if worst := took[len(took)-1]; worst >= time.Second {
		t.Errorf("an inbound message took %v from the webhook to the user's callback, want < 1 s", worst)
	}
}

// TestCloudAPINewPrimaryReadsInboundBacklogAtOnce: webhook rows stored
// while the shard's primary could not read them (its plugin frozen with
// SIGSTOP) reach the user's webhook as soon as the next primary takes the
// claim, not at the plugin's 10 s safety poll: taking a claim wakes the
// plugin's reads. The primary is then SIGKILLed with its plugin.
func TestCloudAPINewPrimaryReadsInboundBacklogAtOnce(t *testing.T) {
	c, hook, gw := startCloudInbound(t, 1)
	first, plugin := freezePrimaryPlugin(t, c, 0)
	var wamids []string
	for i := 0; i < 20; i++ {
		w := fmt.Sprintf("wamid.backlog-%d", i)
		postInbound(t, gw, fmt.Sprintf("1555013%04d", i), w)
		wamids = append(wamids, w)
	}
	time.Sleep(300 * time.Millisecond)
	for _, w := range wamids {
		if _, ok := hook.of(w); ok {
			t.Fatalf("%s reached the user's webhook with the primary's plugin frozen", w)
		}
	}
	syscall.Kill(plugin, syscall.SIGKILL)
	c.CoreappByAddr(first).Kill()
	next := c.WaitCloudPrimary(0, first, 20*time.Second)
	connected := connectedAt(t, c, c.CoreappByAddr(next))
	c.Eventually(20*time.Second, "the backlog at the user's webhook", func() error {
		for _, w := range wamids {
			if _, ok := hook.of(w); !ok {
				return fmt.Errorf("%s not yet", w)
			}
		}
		return nil
	})
	var last time.Time
	for _, w := range wamids {
		if at, _ := hook.of(w); at.After(last) {
			last = at
		}
	}
	since := last.Sub(connected)
	t.Logf("the new primary %s delivered the %d inbound messages left behind %v after it connected", next, len(wamids), since.Round(time.Millisecond))
	if since > time.Second {
		t.Errorf("the inbound backlog reached the user's webhook %v after the new primary connected, want at once (< 1 s, the safety poll is 10 s)", since)
	}
}

// connectedAt is when coreapp p logged that it connected to the network
// (its latest such line; it may come just after its health says so).
func connectedAt(t *testing.T, c *Cluster, p *Proc) time.Time {
	t.Helper()
	var at time.Time
	c.Eventually(2*time.Second, p.Name+" logs its connection", func() error {
		for _, l := range strings.Split(p.Log(), "\n") {
			var e struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "connected to the network" {
				at = e.Time
			}
		}
		if at.IsZero() {
			return fmt.Errorf("no connection logged")
		}
		return nil
	})
	return at
}
