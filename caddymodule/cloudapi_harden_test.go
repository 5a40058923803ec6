package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// cloudFixture is a cluster on the Cloud API transport with gateways, the
// user's webhook, and callbacks for sent, delivered and read.
type cloudFixture struct {
	t     *testing.T
	cl    *clustertest.Cluster
	c     *testCluster
	hook  *callbackHook
	token string
}

func newCloudFixture(t *testing.T, coreapps, shards int) *cloudFixture {
	cl := clustertest.New(t, clustertest.Options{Masters: 2, Coreapps: coreapps, Shards: shards, CloudAPI: true})
	c := &testCluster{t: t, srv: cl.DB, db: cl.SQL, secret: cl.Secret, realMasters: true}
	c.shards.Store(int64(shards))
	return &cloudFixture{t: t, cl: cl, c: c, hook: startCallbackHook(t)}
}

// gateway starts one more gateway with the Cloud API webhook route; the
// first one started logs the admin in and sets the user's webhook.
func (f *cloudFixture) gateway() *gateway {
	g := f.c.startGateway(fmt.Sprintf("cloudapi_app_secret %s\n\t\tcloudapi_verify_token %s\n\t\tcloudapi_phone_number_id %s",
		clustertest.CloudAppSecret, clustertest.CloudVerifyToken, clustertest.CloudPhoneID))
	if f.token == "" {
		f.token = g.loginAdmin()
		st, body := g.do("PATCH", "/v1/settings/application", fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":500}`, f.hook.url), jsonHeaders(bearer(f.token)))
		if st != 200 {
			f.t.Fatalf("PATCH settings: HTTP %d %s", st, body)
		}
		time.Sleep(700 * time.Millisecond) // settings reach every node within a poll
	}
	return g
}

// pointMetaAt sends the test server's webhooks to g from now on (queued
// and retried ones too): what the load balancer in front of the gateways
// does when its health check takes a gateway out.
func (f *cloudFixture) pointMetaAt(g *gateway) {
	f.t.Helper()
	if err := f.cl.GraphDo("POST", "/_test/webhook_url", map[string]string{"url": g.url + "/cloudapi/webhook"}, nil); err != nil {
		f.t.Fatal(err)
	}
}

// inboundLoad injects inbound text messages "<contact> <n>", n counting up
// per contact, round robin over contacts, until stop closes; the test
// server delivers each contact's webhooks in order, retrying each until a
// gateway answers 2xx.
func (f *cloudFixture) inboundLoad(contacts []string, every time.Duration, stop <-chan struct{}, wg *sync.WaitGroup) *[]string {
	var injected []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
			from := contacts[n%len(contacts)]
			var in struct {
				ID string `json:"id"`
			}
			body := from + " " + strconv.Itoa(n/len(contacts))
			if err := f.cl.GraphDo("POST", "/_test/inbound", map[string]any{"from": from, "name": "Bo", "type": "text",
				"content": map[string]string{"body": body}}, &in); err != nil {
				f.t.Errorf("injecting an inbound message: %v", err)
				return
			}
			injected = append(injected, body)
		}
	}()
	return &injected
}

// checkInbound waits until every injected body reached the user's webhook
// and checks each contact's came in the order injected. At-least-once:
// a body may arrive again (an event moved or pushed again after the
// coreapp stored it), but never before a later one of its contact had
// arrived... unless as such a repeat, which is why order is judged on
// first arrivals.
func (f *cloudFixture) checkInbound(injected []string, d time.Duration) (dups int) {
	f.t.Helper()
	f.cl.Eventually(d, fmt.Sprintf("%d inbound messages at the user's webhook", len(injected)), func() error {
		f.hook.mu.Lock()
		defer f.hook.mu.Unlock()
		got := map[string]bool{}
		for _, l := range f.hook.from {
			for _, b := range l {
				got[b] = true
			}
		}
		missing := 0
		for _, b := range injected {
			if !got[b] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d not delivered", missing, len(injected))
		}
		return nil
	})
	f.hook.mu.Lock()
	defer f.hook.mu.Unlock()
	for from, l := range f.hook.from {
		seen := map[string]bool{}
		last := -1
		for _, b := range l {
			if seen[b] {
				dups++
				continue
			}
			seen[b] = true
			n, err := strconv.Atoi(strings.TrimPrefix(b, from+" "))
			if err != nil {
				continue // not the load's
			}
			if n != last+1 {
				f.t.Errorf("contact %s: inbound %d arrived after %d (all: %v)", from, n, last, l)
			}
			last = n
		}
	}
	return dups
}

// sendLoad posts text messages "load <n>" from one goroutine per
// recipient, through the gateway front returns, until stop closes. It
// records the ids accepted (201) per recipient in the order accepted, and
// the requests whose outcome the client never learnt (no answer: the
// gateway died or froze with the request in it), which may or may not have
// been accepted.
func (f *cloudFixture) sendLoad(recipients []string, front func() *gateway, stop <-chan struct{}, wg *sync.WaitGroup) *sendLog {
	l := &sendLog{accepted: map[string][]string{}, unknown: map[string]bool{}}
	for _, to := range recipients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				st, resp := front().do("POST", "/v1/messages", fmt.Sprintf(`{"to":%q,"text":{"body":"load %d"}}`, to, n), jsonHeaders(bearer(f.token)))
				l.mu.Lock()
				switch st {
				case http.StatusCreated:
					l.accepted[to] = append(l.accepted[to], createdID(resp))
				case 0:
					l.unknown[fmt.Sprintf("%s load %d", to, n)] = true
				}
				l.mu.Unlock()
				if st != http.StatusCreated {
					time.Sleep(50 * time.Millisecond) // a gateway down: the client retries
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return l
}

// sendLog is what sendLoad saw.
type sendLog struct {
	mu       sync.Mutex
	accepted map[string][]string // recipient -> ids accepted, in order
	unknown  map[string]bool     // "<recipient> load <n>" sent without an answer
}

// checkSent waits until the test server took every accepted message and
// checks each reached it once, in the order accepted per recipient, that
// anything else it took for these recipients is a request whose answer the
// client never got, and that no shard ever had two senders. It returns how
// many were accepted and how many of the unanswered ones were sent.
func (f *cloudFixture) checkSent(l *sendLog, d time.Duration) (total, unanswered int) {
	f.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	accepted := l.accepted
	total = 0
	for _, l := range accepted {
		total += len(l)
	}
	f.cl.Eventually(d, fmt.Sprintf("all %d accepted messages taken by the server", total), func() error {
		seen := map[string]int{}
		for _, m := range f.cl.GraphState().Messages {
			seen[m.Opaque]++
		}
		missing := 0
		for _, l := range accepted {
			for _, id := range l {
				if seen[id] == 0 {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d not taken yet", missing, total)
		}
		return nil
	})
	ours := map[string]bool{}
	for _, l := range accepted {
		for _, id := range l {
			ours[id] = true
		}
	}
	byTo, count := map[string][]string{}, map[string]int{}
	for _, m := range f.cl.GraphState().Messages {
		if _, load := accepted[m.To]; !load {
			continue
		}
		count[m.Opaque]++
		if !ours[m.Opaque] {
			var b struct {
				Text struct{ Body string } `json:"text"`
			}
			json.Unmarshal(m.Body, &b)
			if !l.unknown[m.To+" "+b.Text.Body] {
				f.t.Errorf("the server took %q for %s (%s), which was neither accepted nor left unanswered", b.Text.Body, m.To, m.Opaque)
			}
			if count[m.Opaque] == 1 {
				unanswered++
			}
			continue
		}
		if count[m.Opaque] == 1 {
			byTo[m.To] = append(byTo[m.To], m.Opaque)
		}
	}
	for to, want := range accepted {
		if got := byTo[to]; strings.Join(got, ",") != strings.Join(want, ",") {
			f.t.Errorf("recipient %s: the server took %v, accepted in the order %v", to, got, want)
		}
		for _, id := range want {
			if count[id] != 1 {
				f.t.Errorf("%s reached the server %d times", id, count[id])
			}
		}
	}
	if v := f.cl.GraphViolations(); v.Count != 0 {
		f.t.Errorf("two senders for one shard: %+v", v)
	}
	return total, unanswered
}

// TestCloudAPIGatewayKilledUnderLoad kills (SIGKILL) and then freezes
// (SIGSTOP) the gateway while clients send through it and Meta's inbound
// webhooks flow into it, on the whole cluster (2 masters, 3 coreapps, 2
// shards, MariaDB, the Graph API test server).
//
// The deployment is the one an operator runs for a gateway that must not be
// a single point of failure: two gateways (they keep no state of their own:
// everything is in MySQL) behind a load balancer that health-checks them and
// sends clients and Meta's webhooks to the ones that answer; a supervisor
// starts a killed one again. A single gateway restarted by a supervisor
// would lose nothing either (Meta retries), but a frozen one is not
// restarted by a supervisor that only watches for exits, and everything
// would wait for it. The test plays the load balancer: when a gateway dies
// or freezes, clients and the test server's webhooks go to the other.
//
// It shows: every message accepted (201) reaches the server once, in the
// order accepted per recipient (a request the dying gateway took but never
// answered may be sent too: the client cannot know, as with any HTTP API); no shard ever has two senders; every
// inbound message reaches the user's webhook, in order per contact; no
// webhook is given up by the test server.
func TestCloudAPIGatewayKilledUnderLoad(t *testing.T) {
	f := newCloudFixture(t, 3, 2)
	g1, g2 := f.gateway(), f.gateway()
	f.pointMetaAt(g1)
	var front atomic.Pointer[gateway]
	front.Store(g1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var recipients, contacts []string
	for i := 0; i < 6; i++ {
		recipients = append(recipients, recipientFor(t, i%2, 2, 400+i))
		contacts = append(contacts, recipientFor(t, i%2, 2, 500+i))
	}
	sends := f.sendLoad(recipients, front.Load, stop, &wg)
	injected := f.inboundLoad(contacts, 40*time.Millisecond, stop, &wg)

	time.Sleep(2 * time.Second)
	g1.cmd.Process.Signal(syscall.SIGKILL)
	front.Store(g2)
	f.pointMetaAt(g2)
	<-g1.done
	t.Log("gateway 1 killed; clients and webhooks go to gateway 2")
	g3 := f.gateway() // the supervisor's replacement
	time.Sleep(2 * time.Second)
	g2.cmd.Process.Signal(syscall.SIGSTOP)
	front.Store(g3)
	f.pointMetaAt(g3)
	t.Log("gateway 2 frozen; clients and webhooks go to gateway 3")
	time.Sleep(3 * time.Second)
	g2.cmd.Process.Signal(syscall.SIGCONT) // it wakes and finishes what it held
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	total, unanswered := f.checkSent(sends, 60*time.Second)
	dups := f.checkInbound(*injected, 60*time.Second)
	gaveUp, retried := 0, 0
	for _, d := range f.cl.GraphState().Deliveries {
		if d.GaveUp {
			gaveUp++
		}
		if !d.Delivered {
			retried++
		}
	}
	if gaveUp > 0 {
		t.Errorf("the test server gave up %d webhooks", gaveUp)
	}
	if total == 0 || len(*injected) == 0 || retried == 0 {
		t.Errorf("no load went through the failures: %d sends accepted, %d inbound, %d webhook attempts failed", total, len(*injected), retried)
	}
	t.Logf("%d messages accepted through 3 gateways (one killed, one frozen), all taken once and in order; %d requests left unanswered (%d of them were sent); %d inbound messages delivered in order per contact (%d duplicates); %d webhook attempts failed and were retried",
		total, len(sends.unknown), unanswered, len(*injected), dups, retried)
}

// reshard sets the shard count through the gateway (retried while the
// master refuses it, e.g. before enough coreapps are healthy) and waits
// until every shard has a connected primary.
//
// The plugins read a shard's webhook rows as soon as the gateway wakes
// them, so at any moment almost none is unacknowledged, and a re-shard
// would find nothing to move: the case the re-shard test is about. So the
// coreapps' plugins are frozen (SIGSTOP) for backlog before the count
// changes, while Meta's webhooks go on being stored, and go on (SIGCONT) as
// soon as the master has committed the new count.
func (f *cloudFixture) reshard(g *gateway, n int, backlog time.Duration) {
	f.t.Helper()
	var frozen []int
	for _, c := range f.cl.Coreapps {
		for _, pid := range clustertest.ChildPIDs(c.Pid()) {
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				frozen = append(frozen, pid)
			}
		}
	}
	thaw := func() {
		for _, pid := range frozen {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		frozen = nil
	}
	defer thaw()
	time.Sleep(backlog)
	f.cl.Eventually(30*time.Second, fmt.Sprintf("the shard count set to %d", n), func() error {
		st, body := g.do("POST", "/v1/account/shards", fmt.Sprintf(`{"shards":%d}`, n), jsonHeaders(bearer(f.token)))
		if st != http.StatusCreated {
			return fmt.Errorf("POST /v1/account/shards: HTTP %d %s", st, body)
		}
		return nil
	})
	thaw()
	f.c.shards.Store(int64(n))
	for s := 0; s < n; s++ {
		f.cl.WaitCloudPrimary(s, "", 30*time.Second)
	}
}

// TestCloudAPIInboundAcrossReshards changes the shard count 2 -> 4 -> 2
// while Meta's webhooks for many contacts flow into the gateway: the
// master's re-shard moves the unacknowledged inbound rows to their
// contact's new shard in its own transaction, and the gateway stores each
// webhook under the count it reads share-locking the cluster row, so every
// inbound message reaches the user's webhook, in order per contact.
// Duplicates are allowed as the transport contract allows them: an event
// moved after the old shard's coreapp had stored it but before it
// acknowledged it is delivered again, the moved copy in order.
func TestCloudAPIInboundAcrossReshards(t *testing.T) {
	f := newCloudFixture(t, 4, 2)
	g := f.gateway()
	f.pointMetaAt(g)
	var contacts []string
	for i := 0; i < 16; i++ {
		contacts = append(contacts, recipientFor(t, i%4, 4, 600+i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	injected := f.inboundLoad(contacts, 25*time.Millisecond, stop, &wg)
	for _, n := range []int{4, 2, 4, 2} {
		time.Sleep(2 * time.Second)
		f.reshard(g, n, 500*time.Millisecond)
		t.Logf("shards: %d", n)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	dups := f.checkInbound(*injected, 60*time.Second)
	var moved, rows int
	if err := f.cl.SQL.QueryRow(`SELECT COUNT(*), COALESCE(SUM(kind = 'moved'), 0) FROM cloudapi_inbound`).Scan(&rows, &moved); err != nil {
		t.Fatal(err)
	}
	if moved == 0 {
		t.Errorf("no inbound row was moved by the re-shards (%d rows): the test did not exercise the move", rows)
	}
	var gaveUp int
	for _, d := range f.cl.GraphState().Deliveries {
		if d.GaveUp {
			gaveUp++
		}
	}
	if gaveUp > 0 {
		t.Errorf("the test server gave up %d webhooks", gaveUp)
	}
	t.Logf("%d inbound messages from %d contacts delivered in order per contact across 2 -> 4 -> 2 -> 4 -> 2 (%d duplicates); %d of %d inbound rows are moved places",
		len(*injected), len(contacts), dups, moved, rows)
}
