package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
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
	gp := FreePort(t)
	c := New(t, Options{CloudAPI: true, Coreapps: 2, Shards: 2,
		GraphArgs: []string{"-webhook-url", fmt.Sprintf("http://127.0.0.1:%d/cloudapi/webhook", gp)}})
	var (
		mu      sync.Mutex
		arrived = map[string]time.Time{}
	)
	hookURL, _ := serveHook(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		b, _ := io.ReadAll(r.Body)
		var p struct {
			Messages []struct {
				ID string `json:"id"`
			} `json:"messages"`
		}
		json.Unmarshal(b, &p)
		mu.Lock()
		for _, m := range p.Messages {
			arrived[m.ID] = now
		}
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q}}`, hookURL))
	gw := startCaddy(t, c, buildCaddyBin(t), "gateway", gp, fmt.Sprintf(`{
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
`, gp, CloudAppSecret, CloudVerifyToken, CloudPhoneID))
	time.Sleep(time.Second) // the webhook setting reaches every coreapp (pushed)

	probes := envInt("MC_INBOUND_PROBES", 40)
	hc := &http.Client{Timeout: 10 * time.Second}
	var took []time.Duration
	for i := 0; i < probes; i++ {
		contact := fmt.Sprintf("1555012%04d", i) // both shards
		wamid := fmt.Sprintf("wamid.latency-%d-%d", time.Now().UnixNano(), i)
		body := inboundWebhook(t, contact, wamid, time.Now())
		req, _ := http.NewRequest("POST", gw+"/cloudapi/webhook", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Hub-Signature-256", graphtest.Sign(CloudAppSecret, body))
		sent := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("probe %d: POST /cloudapi/webhook: %v", i, err)
		}
		rb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			// The gateway may not have its shard map yet: Meta retries.
			if i == 0 && resp.StatusCode == http.StatusServiceUnavailable {
				time.Sleep(500 * time.Millisecond)
				i--
				continue
			}
			t.Fatalf("probe %d: POST /cloudapi/webhook: HTTP %d %s", i, resp.StatusCode, rb)
		}
		var at time.Time
		c.Eventually(15*time.Second, "probe "+wamid+" at the user's webhook", func() error {
			mu.Lock()
			defer mu.Unlock()
			var ok bool
			if at, ok = arrived[wamid]; !ok {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		took = append(took, at.Sub(sent))
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
