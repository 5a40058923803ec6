package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

const (
	testAppSecret   = "test-app-secret"
	testVerifyToken = "test-verify-token"
)

// metaEvent is one event of a test webhook: an inbound text from a
// contact (status "") or a status of a message to them.
type metaEvent struct {
	wamid, contact, status string
	ts                     int64
}

// metaWebhook is the body Meta would send for events: one change per
// event, each valid against Meta's description (checked).
func metaWebhook(t testing.TB, events ...metaEvent) string {
	t.Helper()
	var changes []string
	for _, e := range events {
		ts := strconv.FormatInt(e.ts, 10)
		var v string
		if e.status == "" {
			v = fmt.Sprintf(`"contacts":[{"profile":{"name":"Contact %[1]s"},"wa_id":"%[1]s"}],
				"messages":[{"from":"%[1]s","id":"%[2]s","timestamp":"%[3]s","type":"text","text":{"body":"hello %[2]s"}}]`, e.contact, e.wamid, ts)
		} else {
			v = fmt.Sprintf(`"statuses":[{"id":"%s","status":"%s","timestamp":"%s","recipient_id":"%s","biz_opaque_callback_data":"our-%s"}]`,
				e.wamid, e.status, ts, e.contact, e.wamid)
		}
		changes = append(changes, `{"field":"messages","value":{"messaging_product":"whatsapp",
			"metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},`+v+`}}`)
	}
	body := `{"object":"whatsapp_business_account","entry":[{"id":"419561257915477","changes":[` + strings.Join(changes, ",") + `]}]}`
	if err := metaspec.ValidateWebhook([]byte(body)); err != nil {
		t.Fatalf("the test's webhook is not one Meta would send: %v", err)
	}
	return body
}

func signed(body string) map[string]string {
	return map[string]string{inbound.SignatureHeader: inbound.Sign([]byte(testAppSecret), []byte(body)), "Content-Type": "application/json"}
}

// setWebhook sets a webhook with the default choice of statuses (delivered
// and read, not sent), before the gateway starts and reads the settings:
// the gateway stores only the statuses a webhook wants.
func (c *testCluster) setWebhook() {
	c.t.Helper()
	if _, err := settings.Patch(context.Background(), c.db, []byte(`{"webhooks":{"url":"http://127.0.0.1:1/hook"}}`)); err != nil {
		c.t.Fatal(err)
	}
}

// storedRows lists cloudapi_inbound as "shard/seq/dedupe_key" lines.
func (c *testCluster) storedRows() map[string]string {
	c.t.Helper()
	rows, err := c.db.Query(`SELECT shard, seq, dedupe_key, recipient FROM cloudapi_inbound ORDER BY shard, seq`)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var s, seq int
		var key, rcpt string
		if err := rows.Scan(&s, &seq, &key, &rcpt); err != nil {
			c.t.Fatal(err)
		}
		if want, _ := shard.For(rcpt, int(c.shards.Load())); want != s {
			c.t.Errorf("%s of %s is stored in shard %d, its shard is %d", key, rcpt, s, want)
		}
		if _, dup := out[key]; dup {
			c.t.Errorf("%s stored twice", key)
		}
		out[key] = fmt.Sprintf("%d/%d", s, seq)
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// checkGapless fails unless each shard's seqs are 1..n.
func (c *testCluster) checkGapless() {
	c.t.Helper()
	rows, err := c.db.Query(`SELECT shard, COUNT(*), MIN(seq), MAX(seq) FROM cloudapi_inbound GROUP BY shard`)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s, n, lo, hi int
		rows.Scan(&s, &n, &lo, &hi)
		if lo != 1 || hi != n {
			c.t.Errorf("shard %d: %d rows numbered %d..%d, want 1..%d", s, n, lo, hi, n)
		}
	}
}

// The webhook through a real gateway and MariaDB: Meta's verification,
// refusals (unsigned, wrongly signed, stale, unconfigured), a signed
// webhook stored per shard before the 200, a duplicate stored once, and a
// database outage answered 500 with nothing half-stored.
func TestCloudAPIWebhook(t *testing.T) {
	const shards = 4
	c := newTestCluster(t, shards)
	c.setWebhook()
	// The app secret from the environment (the plugin's variable), the
	// verify token from the Caddyfile.
	g := c.startGatewayEnv("cloudapi_verify_token "+testVerifyToken,
		[]string{"WA_API_KEY=" + testAPIKey, "MC_CLOUDAPI_APP_SECRET=" + testAppSecret},
		map[string]string{"Authorization": "Apikey " + testAPIKey})
	now := time.Now().Unix()

	t.Run("verification", func(t *testing.T) {
		q := url.Values{"hub.mode": {"subscribe"}, "hub.verify_token": {testVerifyToken}, "hub.challenge": {"1158201444"}}
		if st, body := g.do("GET", "/cloudapi/webhook?"+q.Encode(), "", nil); st != 200 || body != "1158201444" {
			t.Errorf("verification: HTTP %d %q, want 200 with the challenge", st, body)
		}
		q.Set("hub.verify_token", "guessed")
		st, body := g.do("GET", "/cloudapi/webhook?"+q.Encode(), "", nil)
		expect(t, "a wrong verify token", st, body, 403, apierror.AccessDenied)
		q.Set("hub.verify_token", testVerifyToken)
		q.Set("hub.mode", "unsubscribe")
		st, body = g.do("GET", "/cloudapi/webhook?"+q.Encode(), "", nil)
		expect(t, "not a subscription", st, body, 403, apierror.AccessDenied)
	})

	var events []metaEvent
	for s := range shards {
		to := recipientFor(t, s, shards, 1)
		events = append(events, metaEvent{fmt.Sprintf("wamid.in-%d", s), to, "", now},
			metaEvent{fmt.Sprintf("wamid.out-%d", s), to, "delivered", now},
			metaEvent{fmt.Sprintf("wamid.out-%d", s), to, "read", now})
	}
	body := metaWebhook(t, events...)

	t.Run("refused", func(t *testing.T) {
		st, b := g.do("POST", "/cloudapi/webhook", body, map[string]string{"Content-Type": "application/json"})
		expect(t, "unsigned", st, b, 403, apierror.AccessDenied)
		st, b = g.do("POST", "/cloudapi/webhook", body, map[string]string{inbound.SignatureHeader: inbound.Sign([]byte("another secret"), []byte(body))})
		expect(t, "signed with another secret", st, b, 403, apierror.AccessDenied)
		st, b = g.do("POST", "/cloudapi/webhook", body+" ", signed(body))
		expect(t, "a body changed after signing", st, b, 403, apierror.AccessDenied)
		stale := metaWebhook(t, metaEvent{"wamid.old", recipientFor(t, 0, shards, 2), "", now - 9*24*3600})
		st, b = g.do("POST", "/cloudapi/webhook", stale, signed(stale))
		expect(t, "stale", st, b, 403, apierror.AccessDenied)
		if rows := c.storedRows(); len(rows) != 0 {
			t.Errorf("refused webhooks stored %v", rows)
		}
	})

	t.Run("stored per shard before the 200, duplicates once", func(t *testing.T) {
		st, b := g.do("POST", "/cloudapi/webhook", body, signed(body))
		if st != 200 || b != `{"events":12,"stored":12}` {
			t.Fatalf("HTTP %d %s, want 200 with 12 stored", st, b)
		}
		// Answered 200 means committed: read at once, no waiting.
		rows := c.storedRows()
		if len(rows) != 12 {
			t.Fatalf("%d rows after the 200, want 12: %v", len(rows), rows)
		}
		for s := range shards {
			for i, key := range []string{fmt.Sprintf("wamid.in-%d", s), fmt.Sprintf("wamid.out-%d:delivered", s), fmt.Sprintf("wamid.out-%d:read", s)} {
				if want := fmt.Sprintf("%d/%d", s, i+1); rows[key] != want {
					t.Errorf("%s at %q, want %s (its shard, in Meta's order)", key, rows[key], want)
				}
			}
		}
		// Meta's retry of the same webhook, and a new one repeating part.
		st, b = g.do("POST", "/cloudapi/webhook", body, signed(body))
		if st != 200 || b != `{"events":12,"stored":0}` {
			t.Errorf("the same webhook again: HTTP %d %s, want 200 with nothing new", st, b)
		}
		again := metaWebhook(t, events[0], metaEvent{"wamid.in-new", events[0].contact, "", now})
		st, b = g.do("POST", "/cloudapi/webhook", again, signed(again))
		if st != 200 || b != `{"events":2,"stored":1}` {
			t.Errorf("a webhook repeating one event: HTTP %d %s, want 1 stored", st, b)
		}
		if rows := c.storedRows(); len(rows) != 13 {
			t.Errorf("%d rows, want 13", len(rows))
		}
		c.checkGapless()
	})

	t.Run("statuses no webhook wants are left out", func(t *testing.T) {
		before := c.storedRows()
		to := recipientFor(t, 1, shards, 4)
		mixed := metaWebhook(t, metaEvent{"wamid.out-sent", to, "sent", now}, metaEvent{"wamid.in-sent", to, "", now},
			metaEvent{"wamid.out-sent", to, "delivered", now})
		st, b := g.do("POST", "/cloudapi/webhook", mixed, signed(mixed))
		if st != 200 || b != `{"events":2,"stored":2}` {
			t.Fatalf("HTTP %d %s, want 200 with the message and the delivered status stored", st, b)
		}
		rows := c.storedRows()
		if _, ok := rows["wamid.out-sent:sent"]; ok {
			t.Error("the sent status was stored, though the webhook does not ask for it (sent_status off)")
		}
		for _, key := range []string{"wamid.in-sent", "wamid.out-sent:delivered"} {
			if _, ok := rows[key]; !ok {
				t.Errorf("%s was not stored", key)
			}
		}
		if len(rows) != len(before)+2 {
			t.Errorf("%d rows, want %d", len(rows), len(before)+2)
		}
		c.checkGapless()
	})

	t.Run("database down: 500, nothing half-stored", func(t *testing.T) {
		before := c.storedRows()
		var down []metaEvent
		for s := range shards {
			down = append(down, metaEvent{fmt.Sprintf("wamid.down-%d", s), recipientFor(t, s, shards, 3), "", now})
		}
		downBody := metaWebhook(t, down...)
		c.srv.Kill()
		st, b := g.do("POST", "/cloudapi/webhook", downBody, signed(downBody))
		expect(t, "MySQL down", st, b, 500, apierror.GenericError)
		c.srv.Restart(0)
		if rows := c.storedRows(); len(rows) != len(before) {
			t.Fatalf("after a 500, %d rows, want the %d of before", len(rows), len(before))
		}
		// Meta retries until the database is back.
		deadline := time.Now().Add(15 * time.Second)
		for {
			st, b = g.do("POST", "/cloudapi/webhook", downBody, signed(downBody))
			if st == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still HTTP %d %s 15 s after MySQL came back", st, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if rows := c.storedRows(); len(rows) != len(before)+shards {
			t.Errorf("after the retry, %d rows, want %d", len(rows), len(before)+shards)
		}
		c.checkGapless()
	})

	t.Run("counted", func(t *testing.T) {
		_, metrics := g.do("GET", "/metrics?format=prometheus", "", map[string]string{"Authorization": "Apikey " + testAPIKey})
		if got := metricValue(metrics, `multiconnect_gateway_cloudapi_statuses_left_out_total`); got != 1 {
			t.Errorf("cloudapi_statuses_left_out_total = %v, want 1 (the sent status)", got)
		}
		for result, want := range map[string]float64{"stored": 5, "unsigned": 1, "bad_signature": 2, "stale": 1, "failed": 1} {
			got := metricValue(metrics, `multiconnect_gateway_cloudapi_webhooks_total{result="`+result+`"}`)
			// Retries while MySQL restarts may fail more than once.
			if got != want && (result != "failed" || got < want) {
				t.Errorf("cloudapi_webhooks_total{result=%q} = %v, want %v", result, got, want)
			}
		}
	})

	t.Run("not configured: 404", func(t *testing.T) {
		off := c.startGateway("")
		st, b := off.do("POST", "/cloudapi/webhook", body, signed(body))
		expect(t, "POST without an app secret", st, b, 404, apierror.NotFound)
		st, b = off.do("GET", "/cloudapi/webhook?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1", "", nil)
		expect(t, "GET without an app secret", st, b, 404, apierror.NotFound)
	})
}

// SIGKILL of the gateway while Meta's webhooks stream in: every webhook
// answered 200 is stored, and Meta's retries of the others (to the next
// gateway) store each event once.
func TestCloudAPIWebhookGatewayKilled(t *testing.T) {
	const shards, senders, perSender = 4, 4, 400
	c := newTestCluster(t, shards)
	c.setWebhook()
	extra := "cloudapi_app_secret " + testAppSecret
	g := c.startGateway(extra)
	now := time.Now().Unix()
	webhookOf := func(w, i int) string {
		to := recipientFor(t, (w+i)%shards, shards, 10+i)
		return metaWebhook(t, metaEvent{fmt.Sprintf("wamid.k-%d-%d", w, i), to, "", now},
			metaEvent{fmt.Sprintf("wamid.o-%d-%d", w, i), to, "delivered", now})
	}
	bodies := make([][]string, senders)
	for w := range senders {
		for i := range perSender {
			bodies[w] = append(bodies[w], webhookOf(w, i))
		}
	}
	var mu sync.Mutex
	acked := map[string]bool{} // body -> answered 200
	var wg sync.WaitGroup
	answered := make(chan struct{}, senders*perSender)
	for w := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, b := range bodies[w] {
				st, _ := g.do("POST", "/cloudapi/webhook", b, signed(b))
				if st == 0 {
					return // the gateway is gone
				}
				if st == 200 {
					mu.Lock()
					acked[b] = true
					mu.Unlock()
					answered <- struct{}{}
				}
			}
		}()
	}
	// Kill it mid-stream: after some webhooks were answered, with others
	// in flight.
	for range 100 {
		select {
		case <-answered:
		case <-time.After(20 * time.Second):
			t.Fatal("the gateway answered fewer than 100 webhooks in 20 s")
		}
	}
	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	<-g.done

	rows := c.storedRows()
	for b := range acked {
		var p struct {
			Entry []struct {
				Changes []struct {
					Value struct {
						Messages []struct{ ID string }
						Statuses []struct{ ID, Status string }
					}
				}
			}
		}
		json.Unmarshal([]byte(b), &p)
		for _, ch := range p.Entry[0].Changes {
			for _, m := range ch.Value.Messages {
				if rows[m.ID] == "" {
					t.Errorf("%s was answered 200 and is not stored", m.ID)
				}
			}
			for _, s := range ch.Value.Statuses {
				if rows[s.ID+":"+s.Status] == "" {
					t.Errorf("%s %s was answered 200 and is not stored", s.ID, s.Status)
				}
			}
		}
	}
	t.Logf("%d webhooks answered 200 before the SIGKILL, %d rows stored (stored, unanswered webhooks are retried below)", len(acked), len(rows))

	// Meta retries everything not acknowledged, to the restarted gateway.
	g2 := c.startGateway(extra)
	for w := range senders {
		for _, b := range bodies[w] {
			if acked[b] {
				continue
			}
			if st, body := g2.do("POST", "/cloudapi/webhook", b, signed(b)); st != 200 {
				t.Fatalf("retry: HTTP %d %s", st, body)
			}
		}
	}
	if rows := c.storedRows(); len(rows) != 2*senders*perSender {
		t.Errorf("after the retries, %d rows, want %d (each event once)", len(rows), 2*senders*perSender)
	}
	c.checkGapless()
}

// TestCloudAPIWebhookWakesShardPrimary: once a webhook's rows are
// committed, the gateway tells the primary coreapp of each shard that got
// rows (POST /internal/events-stored), and only those; when the node its
// map names answers 1018 (the map is stale: the shard moved and the
// gateway has not heard), it reloads the map and tells the new primary.
func TestCloudAPIWebhookWakesShardPrimary(t *testing.T) {
	const shards = 2
	c := newTestCluster(t, shards)
	// The gateway's own map refresh (10 s), not the harness's 100 ms: the
	// stub master's hub never pushes, so a move made in SQL below stays
	// unseen until a wake is refused.
	c.realMasters = true
	primaries := c.addPrimaries(shards)
	master := c.addNode("master")
	master.primary.Store(true)
	c.setPrimaryMaster(master)
	g := c.startGateway("cloudapi_app_secret " + testAppSecret)
	wakes := func(n *stubNode) int {
		k := 0
		for _, r := range n.requests() {
			if r.path == "/internal/events-stored" && r.method == "POST" && r.secretsOK {
				k++
			}
		}
		return k
	}
	waitWake := func(n *stubNode, want int, what string) {
		t.Helper()
		start := time.Now()
		for wakes(n) < want {
			if time.Since(start) > 3*time.Second {
				t.Fatalf("%s: %d wakes at %s, want %d", what, wakes(n), n.addr, want)
			}
			time.Sleep(time.Millisecond)
		}
	}

	now := time.Now().Unix()
	body := metaWebhook(t, metaEvent{"wamid.w0", recipientFor(t, 0, shards, 7), "", now})
	posted := time.Now()
	if st, b := g.do("POST", "/cloudapi/webhook", body, signed(body)); st != 200 {
		t.Fatalf("HTTP %d %s", st, b)
	}
	waitWake(primaries[0], 1, "shard 0's rows")
	woken := time.Since(posted)
	time.Sleep(100 * time.Millisecond)
	if n := wakes(primaries[1]); n != 0 {
		t.Errorf("shard 1's primary was woken %d times for shard 0's rows", n)
	}
	// Meta's retry of the same webhook stores nothing: nobody is woken.
	if st, b := g.do("POST", "/cloudapi/webhook", body, signed(body)); st != 200 {
		t.Fatalf("HTTP %d %s", st, b)
	}
	time.Sleep(100 * time.Millisecond)
	if n := wakes(primaries[0]); n != 1 {
		t.Errorf("a retried webhook (nothing new stored) woke shard 0's primary: %d wakes", n)
	}
	t.Logf("shard 0's primary woken within %v of the webhook's POST", woken.Round(100*time.Microsecond))

	// Shard 0 moves to another coreapp behind the gateway's back (its map
	// poll is 10 s away and the stub master pushes nothing): the old
	// primary answers 1018, the gateway reloads and wakes the new one.
	moved := c.addNode("coreapp")
	moved.shard.Store(0)
	moved.connected.Store(true)
	primaries[0].shard.Store(-1)
	c.assign(0, moved, 2)
	body = metaWebhook(t, metaEvent{"wamid.w1", recipientFor(t, 0, shards, 8), "", now})
	if st, b := g.do("POST", "/cloudapi/webhook", body, signed(body)); st != 200 {
		t.Fatalf("HTTP %d %s", st, b)
	}
	waitWake(moved, 1, "shard 0's rows after it moved")
	if primaries[0].refused.Load() == 0 {
		t.Errorf("the old primary was not asked first (the map was reloaded before the wake)")
	}
}
