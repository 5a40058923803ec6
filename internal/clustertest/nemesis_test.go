package clustertest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/shard"
)

// TestNemesis runs steady load through the gateway (one request in flight
// per recipient, each retried with its idempotency key until it gets 201)
// while random faults strike, at most two at a time and each healed within
// seconds: coreapps SIGKILLed or SIGSTOPped (long or short, with or without
// their plugins), plugins killed, masters killed, MariaDB crashed, the
// gateway restarted, MySQL slowed, a coreapp's path to the network cut, the
// shard count changed between 2 and 4. Then everything is healed and
// drained, and it checks: no acknowledged message lost, none twice, each
// recipient's messages at the network in acceptance order, never two
// connections for one shard, every status and inbound callback delivered,
// in order per recipient. It reports availability per shard, the longest
// outage, how long each struck primary's shards took to be connected
// elsewhere, and the schedule.
//
//	MC_NEMESIS_DURATION  how long faults run (default 60s)
//	MC_NEMESIS_SEED      the math/rand seed of the schedule (default: random, printed)
//	MC_NEMESIS_FAULTS    comma list of fault kinds (default: all; see nemesisKinds)
func TestNemesis(t *testing.T) {
	dur := 60 * time.Second
	if v := os.Getenv("MC_NEMESIS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			t.Fatalf("MC_NEMESIS_DURATION=%q: want a duration of at least 5s", v)
		}
		dur = d
	}
	seed := time.Now().UnixNano()
	if v := os.Getenv("MC_NEMESIS_SEED"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("MC_NEMESIS_SEED=%q: %v", v, err)
		}
		seed = s
	}
	var kinds []string
	for _, k := range nemesisKinds {
		if nemesisHeldBack[k] == "" {
			kinds = append(kinds, k)
		}
	}
	if v := os.Getenv("MC_NEMESIS_FAULTS"); v == "all" {
		kinds = nemesisKinds
	} else if v != "" {
		kinds = nil
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			found := false
			for _, known := range nemesisKinds {
				found = found || known == k
			}
			if !found {
				t.Fatalf("MC_NEMESIS_FAULTS: unknown fault %q; known: %s", k, strings.Join(nemesisKinds, ","))
			}
			kinds = append(kinds, k)
		}
	}
	t.Logf("nemesis: MC_NEMESIS_SEED=%d MC_NEMESIS_DURATION=%v MC_NEMESIS_FAULTS=%s", seed, dur, strings.Join(kinds, ","))
	for _, k := range nemesisKinds {
		if why := nemesisHeldBack[k]; why != "" && !slices.Contains(kinds, k) {
			t.Logf("fault %s held back by default (MC_NEMESIS_FAULTS=all enables it): %s", k, why)
		}
	}

	var proxies []*Proxy
	c := New(t, Options{Shards: 2, Coreapps: 6, DBProxy: true, CoreappEnv: func(c *Cluster, i int) []string {
		px := StartProxy(t, c.SimnetTCP)
		proxies = append(proxies, px)
		return []string{"SIMNET_ADDR=" + px.Addr()}
	}})
	hook := startHook(t)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":300}`, hook.url))
	caddy := buildCaddyBin(t)
	gp := FreePort(t)
	gw, gwURL := startCaddyProc(t, c, caddy, "gateway", gp,
		fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tmulticonnect {\n\t\tbcrypt_cost 4\n\t}\n}\n", gp))
	token := gatewayLogin(t, gwURL)
	time.Sleep(600 * time.Millisecond) // settings reach every node within one 200 ms poll

	n := &nemesis{c: c, rng: rand.New(rand.NewSource(seed)), kinds: kinds, caddyBin: caddy, gwURL: gwURL, token: token,
		coreapps: append([]*Proc(nil), c.Coreapps...), masters: append([]*Proc(nil), c.Masters...), gw: gw,
		netProxy: map[string]*Proxy{}, busy: map[string]bool{}, hc: &http.Client{Timeout: 5 * time.Second}}
	for i, p := range c.Coreapps {
		n.netProxy[p.Addr] = proxies[i]
	}
	tos := nemesisRecipients(24)
	start := time.Now()
	n.shards = []shardCount{{start, 2}}
	faultsEnd := start.Add(dur)
	sendEnd := faultsEnd.Add(45 * time.Second) // a message in flight at the end is retried until then
	drainEnd := faultsEnd.Add(85 * time.Second)

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(tos) * 2}}
	senders := make([]*nemesisSender, len(tos))
	stopNew := make(chan struct{})
	var wg sync.WaitGroup
	for i, to := range tos {
		senders[i] = &nemesisSender{to: to, idx: i, pending: -1, fails: map[string]int{}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			senders[i].run(hc, gwURL, token, stopNew, sendEnd, 150*time.Millisecond)
		}()
	}
	// Inbound messages from any recipient, including those a re-shard
	// moves: the network routes each to its recipient's shard under the
	// count the coreapps told it (the shard named here only counts before
	// any did).
	inbound := map[string][]string{}
	var inboundErrs []string
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		rng := rand.New(rand.NewSource(seed + 1))
		from := tos
		for k := 0; time.Now().Before(faultsEnd); k++ {
			time.Sleep(250 * time.Millisecond)
			to := from[rng.Intn(len(from))]
			s, _ := shard.For(to, 4)
			id := fmt.Sprintf("in-%s-%d", to, k)
			if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": s, "id": id, "recipient": to,
				"payload": map[string]any{"type": "text", "text": map[string]string{"body": id}}}); err != nil {
				inboundErrs = append(inboundErrs, err.Error())
				continue
			}
			inbound[to] = append(inbound[to], id)
		}
	}()

	n.run(faultsEnd)
	close(stopNew)
	n.healAll()
	// The restarted processes, so a failure's log tails are theirs.
	c.Coreapps, c.Masters = n.coreapps, n.masters
	healed := time.Now()
	wg.Wait()
	<-injected
	sendersDone := time.Now()

	// Drain: every acknowledged message at the network, every callback at
	// the webhook.
	acked := map[string]bool{}
	total := 0
	for _, s := range senders {
		for _, id := range s.acked {
			acked[id] = true
		}
		total += len(s.acked)
	}
	var net []NetworkMessage
	drainErr := "none"
	for {
		net = c.NetworkMessages("")
		drainErr = ""
		got := 0
		for _, m := range net {
			if acked[m.ID] {
				got++
			}
		}
		if got < total {
			drainErr = fmt.Sprintf("%d of %d acknowledged messages at the network", got, total)
		} else if missing := missingCallbacks(hook, senders, inbound); missing != "" {
			drainErr = missing
		}
		if drainErr == "" || time.Now().After(drainEnd) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	drained := time.Now()

	n.report(t, start, faultsEnd, senders)
	t.Logf("load: %d messages acknowledged to %d recipients, %d inbound injected; faults ended at +%v, healed +%v, senders done +%v, drained +%v (bound: +%v)",
		total, len(tos), countAll(inbound), faultsEnd.Sub(start).Round(time.Millisecond), healed.Sub(start).Round(time.Millisecond),
		sendersDone.Sub(start).Round(time.Millisecond), drained.Sub(start).Round(time.Millisecond), drainEnd.Sub(start).Round(time.Millisecond))

	// The checks.
	for _, e := range n.errs {
		t.Errorf("fault harness: %s", e)
	}
	for _, e := range inboundErrs {
		t.Errorf("inject inbound: %s", e)
	}
	for _, s := range senders {
		if s.fatal != "" {
			t.Errorf("recipient %s: %s", s.to, s.fatal)
		}
		if s.pending >= 0 {
			t.Errorf("recipient %s: message #%d never acknowledged within %v after the faults ended", s.to, s.pending, sendEnd.Sub(faultsEnd))
		}
	}
	if drainErr != "" {
		t.Errorf("not drained %v after the faults ended: %s", drainEnd.Sub(faultsEnd), drainErr)
		n.whereStuck(t)
	}
	checkNetwork(senders, net).report(t)
	c.RequireNoViolations()
	emitted, err := emittedOrder(c)
	if err != nil {
		t.Error(err)
	}
	cb := checkCallbacks(hook, senders, inbound, emitted)
	cb.report(t)
	n.explainOrder(t, start, hook, cb.pairs)
	t.Logf("the network emitted %d statuses of a recipient's message before the same status of its earlier message (it emits a shard's statuses in acceptance order, so 0 is expected unless a re-shard moved the recipient between two shards' emitters); the webhook must follow the network's order", cb.netInversions)
	if t.Failed() {
		t.Logf("reproduce with MC_NEMESIS_SEED=%d MC_NEMESIS_DURATION=%v MC_NEMESIS_FAULTS=%s", seed, dur, strings.Join(kinds, ","))
	}
}

// whereStuck logs where undelivered callbacks wait: at the network (events
// no coreapp stored) or in the database (stored, not posted), per shard.
func (n *nemesis) whereStuck(t *testing.T) {
	t.Helper()
	var st struct {
		Shards []struct {
			Shard         int       `json:"shard"`
			Open          *Interval `json:"open"`
			PendingEvents int       `json:"pending_events"`
			UnackedEvents int       `json:"unacked_events"`
		} `json:"shards"`
	}
	if err := n.c.SimnetJSON("/v1/shards", &st); err != nil {
		t.Logf("simnet shards: %v", err)
	}
	for _, s := range st.Shards {
		t.Logf("at the network: shard %d connected=%v pending_events=%d unacked_events=%d", s.Shard, s.Open != nil, s.PendingEvents, s.UnackedEvents)
	}
	rows, err := n.c.SQL.Query(`SELECT shard_id, COUNT(*), MIN(seq), MAX(seq) FROM callbacks WHERE delivered = 0 GROUP BY shard_id`)
	if err != nil {
		t.Logf("undelivered callbacks: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var shard, count, lo, hi int64
		if rows.Scan(&shard, &count, &lo, &hi) == nil {
			t.Logf("in the database: shard %d has %d undelivered callbacks (seq %d..%d)", shard, count, lo, hi)
		}
	}
}

// explainOrder logs, for the first callbacks found out of order, when the
// webhook first got each and what the database holds for it: the network's
// event number (net_seq, the order the network emitted them), the
// callback's seq (the order it was stored), when it was stored and
// delivered, and how many attempts it took.
func (n *nemesis) explainOrder(t *testing.T, start time.Time, hook *hookReceiver, pairs [][2]string) {
	t.Helper()
	firstAt := map[string]time.Time{}
	hook.mu.Lock()
	for i, s := range hook.statuses {
		if _, ok := firstAt[s.ID+" "+s.Status]; !ok && i < len(hook.statusAt) {
			firstAt[s.ID+" "+s.Status] = hook.statusAt[i]
		}
	}
	hook.mu.Unlock()
	for k, p := range pairs {
		if k == 3 {
			break
		}
		for _, key := range p {
			id, status, _ := strings.Cut(key, " ")
			var seq, netSeq, shardID, attempts int64
			var created, delivered sql.NullTime
			err := n.c.SQL.QueryRow(`SELECT seq, shard_id, COALESCE(net_seq, -1), attempts, created_at, delivered_at FROM callbacks
				WHERE kind = 'status' AND payload LIKE ? AND payload LIKE ? ORDER BY seq LIMIT 1`,
				"%"+id+"%", "%\""+status+"\"%").Scan(&seq, &shardID, &netSeq, &attempts, &created, &delivered)
			t.Logf("%s of %s: first at the webhook +%.3f s; in MySQL: seq %d shard %d net_seq %d attempts %d stored +%.3f s delivered +%.3f s (%v)",
				status, id, firstAt[key].Sub(start).Seconds(), seq, shardID, netSeq, attempts,
				created.Time.Sub(start).Seconds(), delivered.Time.Sub(start).Seconds(), err)
		}
	}
}

// nemesisRecipients returns n recipients, the same number on each shard
// of a 4-shard cluster (and so of a 2-shard one).
func nemesisRecipients(n int) []string {
	var out []string
	per := map[int]int{}
	for i := 0; len(out) < n; i++ {
		to := strconv.Itoa(15550300000 + i*7919)
		if s, _ := shard.For(to, 4); per[s] < n/4 {
			per[s]++
			out = append(out, to)
		}
	}
	return out
}

func countAll(m map[string][]string) int {
	k := 0
	for _, v := range m {
		k += len(v)
	}
	return k
}

// nemesisSender is one client: one message in flight for its recipient,
// retried with the same idempotency key until it is acknowledged (201).
type nemesisSender struct {
	to      string
	idx     int
	mu      sync.Mutex
	acked   []string    // ids, in acceptance order
	ackAt   []time.Time // when each was acknowledged
	pending int         // the message still unacknowledged when sending ended, -1 if none
	fails   map[string]int
	fatal   string
}

var nemesisBody = regexp.MustCompile(`nemesis (\d+) #(\d+)`)

func (s *nemesisSender) run(hc *http.Client, gw, token string, stopNew <-chan struct{}, end time.Time, pause time.Duration) {
	for j := 0; ; j++ {
		select {
		case <-stopNew:
			return
		default:
		}
		body := fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"nemesis %s #%d"}}`, s.to, s.to, j)
		key := fmt.Sprintf("nemesis-%d-%d", s.idx, j)
		for {
			if time.Now().After(end) {
				s.pending = j
				return
			}
			code, id, class := s.post(hc, gw, token, body, key)
			if code == 201 {
				s.mu.Lock()
				s.acked = append(s.acked, id)
				s.ackAt = append(s.ackAt, time.Now())
				s.mu.Unlock()
				break
			}
			s.mu.Lock()
			s.fails[class]++
			s.mu.Unlock()
			// Only answers that may mean "not applied yet" are retried:
			// connection errors and timeouts, 5xx (502 1000, 503 1011/
			// 1018), and 429 (1015: the gateway's limit on token lookups
			// while its cache is cold after a restart, or a coreapp's
			// request slots), after its Retry-After of a second.
			// Anything else is a wrong answer to a valid request.
			switch {
			case code == 429:
				time.Sleep(time.Second)
				continue
			case code != 0 && code < 500:
				s.fatal = fmt.Sprintf("message #%d: %s", j, class)
				s.pending = j
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(pause)
	}
}

// post sends one request (3 s at most) and returns the status, the id on
// 201, and a class of the failure ("HTTP 503 code 1011", "timeout", ...).
func (s *nemesisSender) post(hc *http.Client, gw, token, body, key string) (int, string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", gw+"/v1/messages", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Idempotency-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, "", "timeout (3 s)"
		}
		return 0, "", "connection error"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 201 {
		var out struct {
			Messages []struct {
				ID string `json:"id"`
			} `json:"messages"`
		}
		if json.Unmarshal(b, &out) == nil && len(out.Messages) == 1 && out.Messages[0].ID != "" {
			return 201, out.Messages[0].ID, ""
		}
		return 500, "", "201 without an id: " + string(b)
	}
	if ctx.Err() != nil {
		return 0, "", "timeout (3 s)"
	}
	return resp.StatusCode, "", fmt.Sprintf("HTTP %d code %d", resp.StatusCode, errorCode(b))
}

// problems collects what one check found.
type problems struct {
	what          string
	list          []string
	pairs         [][2]string // callbacks out of order: its "id status", and the later one delivered before it
	netInversions int         // statuses the network emitted out of acceptance order
}

func (p *problems) add(format string, args ...any) {
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

// report fails t with the first 10 problems and their count.
func (p *problems) report(t *testing.T) {
	t.Helper()
	for i, m := range p.list {
		if i == 10 {
			t.Errorf("%s: %d problems in all (first 10 shown)", p.what, len(p.list))
			break
		}
		t.Errorf("%s: %s", p.what, m)
	}
}

// checkNetwork: each recipient received exactly its acknowledged messages,
// in acceptance order, each once (also judged by content, so a resend
// under a new id counts twice); a message never acknowledged may follow
// them.
func checkNetwork(senders []*nemesisSender, net []NetworkMessage) *problems {
	l := &problems{what: "network"}
	byTo := map[string][]NetworkMessage{}
	copies := map[string][]string{}
	for _, m := range net {
		byTo[m.To] = append(byTo[m.To], m)
		if g := nemesisBody.FindStringSubmatch(string(m.Body)); g != nil {
			copies[g[1]+" #"+g[2]] = append(copies[g[1]+" #"+g[2]], m.ID)
		} else {
			l.add("the network received a message that is not the test's: %+v", m)
		}
	}
	for k, ids := range copies {
		if len(ids) > 1 {
			l.add("message %s reached the network %d times: ids %v", k, len(ids), ids)
		}
	}
	mine := map[string]bool{}
	for _, s := range senders {
		mine[s.to] = true
		got := byTo[s.to]
		for k, id := range s.acked {
			if k >= len(got) {
				l.add("recipient %s: acknowledged message #%d (%s) and the %d after it never reached the network", s.to, k, id, len(s.acked)-k-1)
				break
			}
			if got[k].ID != id {
				l.add("recipient %s: the network's message %d is %s (%s), want the acknowledged %s: lost, reordered or extra", s.to, k, got[k].ID, got[k].Body, id)
				break
			}
		}
		if extra := len(got) - len(s.acked); extra > 0 {
			last := got[len(got)-1]
			g := nemesisBody.FindStringSubmatch(string(last.Body))
			if extra > 1 || s.pending < 0 || g == nil || g[2] != strconv.Itoa(s.pending) {
				l.add("recipient %s: the network received %d messages, %d acknowledged (last %s)", s.to, len(got), len(s.acked), last.Body)
			}
		}
	}
	for to := range byTo {
		if !mine[to] {
			l.add("the network received messages for %s, not a test recipient", to)
		}
	}
	return l
}

// missingCallbacks names the first acknowledged message status or inbound
// message the webhook has not received ("" when none is missing).
func missingCallbacks(hook *hookReceiver, senders []*nemesisSender, inbound map[string][]string) string {
	hook.mu.Lock()
	got := make(map[string]bool, len(hook.statuses)+len(hook.inbound))
	for _, s := range hook.statuses {
		got[s.ID+" "+s.Status] = true
	}
	for _, m := range hook.inbound {
		got[m.ID] = true
	}
	hook.mu.Unlock()
	missing, first := 0, ""
	for _, s := range senders {
		for _, id := range s.acked {
			for _, st := range []string{"sent", "delivered", "read"} {
				if !got[id+" "+st] {
					if missing++; first == "" {
						first = fmt.Sprintf("no %s status for %s (to %s)", st, id, s.to)
					}
				}
			}
		}
	}
	for to, ids := range inbound {
		for _, id := range ids {
			if !got[id] {
				if missing++; first == "" {
					first = fmt.Sprintf("inbound %s from %s not delivered", id, to)
				}
			}
		}
	}
	if missing == 0 {
		return ""
	}
	return fmt.Sprintf("%d callbacks missing, e.g. %s", missing, first)
}

// netEvent is where the network put a status event: its shard and its
// number there (callbacks.net_seq), which is the order it emitted them;
// seq is -1 for a callback a re-shard moved (the move clears net_seq) and
// for a number the network gave an event it moved between shards' streams
// (see storedEvent).
type netEvent struct {
	shard int
	seq   int64
}

// storedEvent is one stored status callback: which status, and the
// network position it was stored under.
type storedEvent struct {
	key string // "id status"
	ev  netEvent
}

// emittedOrder reads every stored status's network position from MySQL
// (nothing is purged during a test: the GC runs hourly and keeps 30 days)
// and the numbers the network gave to events it moved (GET /v1/shards).
func emittedOrder(c *Cluster) (map[string]netEvent, error) {
	var st struct {
		Shards []struct {
			Shard      int     `json:"shard"`
			Renumbered []int64 `json:"renumbered"`
		} `json:"shards"`
	}
	if err := c.SimnetJSON("/v1/shards", &st); err != nil {
		return nil, fmt.Errorf("read the network's renumbered events: %w", err)
	}
	renumbered := map[netEvent]bool{}
	for _, sh := range st.Shards {
		for _, n := range sh.Renumbered {
			renumbered[netEvent{sh.Shard, n}] = true
		}
	}
	rows, err := c.SQL.Query(`SELECT shard_id, COALESCE(net_seq, -1), payload FROM callbacks WHERE kind = 'status' ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("read stored status events: %w", err)
	}
	defer rows.Close()
	var stored []storedEvent
	for rows.Next() {
		var ev netEvent
		var payload []byte
		if err := rows.Scan(&ev.shard, &ev.seq, &payload); err != nil {
			return nil, fmt.Errorf("read stored status events: %w", err)
		}
		var hs hookStatus
		if err := json.Unmarshal(payload, &hs); err != nil {
			return nil, fmt.Errorf("stored status %s: %w", payload, err)
		}
		stored = append(stored, storedEvent{hs.ID + " " + hs.Status, ev})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read stored status events: %w", err)
	}
	return pickEmitted(stored, renumbered), nil
}

// pickEmitted gives each status the network position its order is judged
// by. A status may be stored more than once: pushed again after a
// failover (same number, stored once), moved by a re-shard (number
// cleared), or moved by the network itself to another shard's stream when
// the count changed, which numbers it again behind what that stream held:
// a number that says where the move put it, not when the network emitted
// it (the nemesis once compared such a number, a "delivered" renumbered
// after its message's "read", and reported an order the webhook had in
// fact followed). Only a number the network gave when it emitted the
// event is comparable; a status with none is not judged (-1).
func pickEmitted(stored []storedEvent, renumbered map[netEvent]bool) map[string]netEvent {
	out := map[string]netEvent{}
	for _, s := range stored {
		ev := s.ev
		if renumbered[ev] {
			ev.seq = -1
		}
		if prev, ok := out[s.key]; !ok || prev.seq < 0 {
			out[s.key] = ev
		}
	}
	return out
}

// checkCallbacks: per recipient, judged on each callback's first delivery
// (a failover may deliver one again), a message's statuses go sent,
// delivered, read; the statuses arrive in the order the network emitted
// them (its event numbers per shard, emitted; a callback a re-shard moved
// has lost its number and is not judged); inbound messages arrive in
// the order they were injected. It also counts the statuses the network
// itself emitted out of acceptance order (the simulated network emits a
// shard's statuses from one goroutine in acceptance order; a re-shard can
// move a recipient between two shards' emitters): that is the network's
// doing, not the product's.
func checkCallbacks(hook *hookReceiver, senders []*nemesisSender, inbound map[string][]string, emitted map[string]netEvent) *problems {
	l := &problems{what: "callbacks"}
	if m := missingCallbacks(hook, senders, inbound); m != "" {
		l.add("webhook: %s", m)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	first := map[string]int{}
	for i, s := range hook.statuses {
		if _, ok := first[s.ID+" "+s.Status]; !ok {
			first[s.ID+" "+s.Status] = i
		}
	}
	// A missing callback is reported above; order is judged among those
	// that arrived.
	recipientOf := map[string]string{}
	for _, s := range senders {
		for k, id := range s.acked {
			recipientOf[id] = s.to
			for _, pair := range [][2]string{{"sent", "delivered"}, {"delivered", "read"}} {
				a, aok := first[id+" "+pair[0]]
				b, bok := first[id+" "+pair[1]]
				if aok && bok && a > b {
					l.add("recipient %s message %s: %s status before %s", s.to, id, pair[1], pair[0])
				}
			}
			if k == 0 {
				continue
			}
			prev := s.acked[k-1]
			for _, st := range []string{"sent", "delivered", "read"} {
				a, aok := emitted[prev+" "+st]
				b, bok := emitted[id+" "+st]
				if aok && bok && a.shard == b.shard && a.seq > b.seq {
					l.netInversions++
				}
			}
		}
	}
	type last struct {
		seq int64
		key string
	}
	seen := map[string]bool{}
	latest := map[string]map[int]last{} // recipient -> shard -> newest event delivered
	for _, s := range hook.statuses {
		key := s.ID + " " + s.Status
		to, mine := recipientOf[s.ID]
		if seen[key] || !mine {
			continue
		}
		seen[key] = true
		ev, ok := emitted[key]
		if !ok {
			l.add("recipient %s: %s status of %s reached the webhook but MySQL has no row for it", to, s.Status, s.ID)
			continue
		}
		if ev.seq < 0 {
			continue // moved by a re-shard: its network number is gone
		}
		if latest[to] == nil {
			latest[to] = map[int]last{}
		}
		if prev, ok := latest[to][ev.shard]; ok && prev.seq > ev.seq {
			l.add("recipient %s: %s (network event %d of shard %d) first delivered after %s (event %d)", to, key, ev.seq, ev.shard, prev.key, prev.seq)
			l.pairs = append(l.pairs, [2]string{key, prev.key})
			continue
		}
		latest[to][ev.shard] = last{ev.seq, key}
	}
	seenIn := map[string]bool{}
	order := map[string][]string{}
	for _, m := range hook.inbound {
		if !seenIn[m.ID] {
			seenIn[m.ID] = true
			order[m.From] = append(order[m.From], m.ID)
		}
	}
	for to, want := range inbound {
		if fmt.Sprint(order[to]) != fmt.Sprint(want) {
			l.add("recipient %s: inbound messages arrived as %v, want %v", to, order[to], want)
		}
	}
	return l
}

// report logs availability per shard, the longest outage, how long each
// struck primary's shard took to be connected again (and elsewhere), the
// failures the clients saw, and the fault schedule.
func (n *nemesis) report(t *testing.T, start, end time.Time, senders []*nemesisSender) {
	t.Helper()
	windows := int(end.Sub(start) / time.Second)
	ok := make([][]bool, 4)
	for s := range ok {
		ok[s] = make([]bool, windows)
	}
	fails := map[string]int{}
	for _, snd := range senders {
		for _, at := range snd.ackAt {
			w := int(at.Sub(start) / time.Second)
			if w < 0 || w >= windows {
				continue
			}
			s, _ := shard.For(snd.to, n.shardCountAt(at))
			ok[s][w] = true
		}
		for class, c := range snd.fails {
			fails[class] += c
		}
	}
	outage := make([]bool, windows) // a deliberate full outage touched the window
	for _, f := range n.faults {
		if fullOutage[f.Kind] {
			for w := int(f.Start.Sub(start) / time.Second); w <= int(f.End.Sub(start)/time.Second) && w < windows; w++ {
				if w >= 0 {
					outage[w] = true
				}
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\navailability (one-second windows in which the shard answered at least one 201; a window counts for a shard only while the shard count included it at both its ends)\n")
	fmt.Fprintf(&b, "| shard | windows | with a 201 | availability | without the %d windows of deliberate full outages (db-crash, gateway-restart) | longest outage |\n|---|---|---|---|---|---|\n", countTrue(outage))
	for s := 0; s < 4; s++ {
		total, good, totalX, goodX, run, longest, longestAt := 0, 0, 0, 0, 0, 0, 0
		for w := 0; w < windows; w++ {
			ws, we := start.Add(time.Duration(w)*time.Second), start.Add(time.Duration(w+1)*time.Second)
			if n.shardCountAt(ws) <= s || n.shardCountAt(we) <= s {
				run = 0
				continue
			}
			total++
			if !outage[w] {
				totalX++
			}
			if ok[s][w] {
				good++
				if !outage[w] {
					goodX++
				}
				run = 0
				continue
			}
			run++
			if run > longest {
				longest, longestAt = run, w-run+1
			}
		}
		if total == 0 {
			fmt.Fprintf(&b, "| %d | 0 | | | | |\n", s)
			continue
		}
		fmt.Fprintf(&b, "| %d | %d | %d | %.1f%% | %.1f%% | %d s (from +%d s) |\n", s, total, good,
			100*float64(good)/float64(total), 100*float64(goodX)/float64(max(totalX, 1)), longest, longestAt)
	}

	var conns struct {
		Connections []Interval `json:"connections"`
	}
	if err := n.c.SimnetJSON("/v1/connections", &conns); err != nil {
		t.Errorf("simnet connections: %v", err)
	}
	sort.Slice(conns.Connections, func(i, j int) bool { return conns.Connections[i].Start < conns.Connections[j].Start })
	sort.Slice(n.faults, func(i, j int) bool { return n.faults[i].Start.Before(n.faults[j].Start) })
	fmt.Fprintf(&b, "\nstruck primaries: what became of the connection the struck primary held, and from the fault until the shard's next connection (the network's timestamps) and by whom, for a connection the fault ended; \"kept\" marks one that outlived the fault by more than unhealthy_interval, or ended after the node's next fault struck, so this fault did not end it (a later one did: its own row counts that reconnect); \"after\" marks a primary frozen longer than unhealthy_interval or cut from the network whose shard was not connected elsewhere before the fault ended\n")
	fmt.Fprintf(&b, "| at | fault | length | node | shard | its connection | next connection | by | after |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range n.faults {
		length := f.End.Sub(f.Start)
		for _, s := range f.Primary {
			var later time.Time // the next fault on the same node
			for _, g := range n.faults {
				if g.Target == f.Target && g.Start.After(f.Start) && (later.IsZero() || g.Start.Before(later)) {
					later = g.Start
				}
			}
			o := struckOutcome(conns.Connections, s, f.Target, f.Start, f.End, later, seconds(n.c.Opts.Unhealthy))
			held, next, by, late := o.held, "never", "", ""
			switch {
			case o.kept:
				next = "-"
			case o.next != nil:
				d := time.Duration(o.next.Start - f.Start.UnixNano())
				next, by = fmt.Sprintf("%.2f s", d.Seconds()), "another coreapp"
				if o.next.Node == f.Target {
					by = "the same"
				}
				if (f.Kind == "freeze-long" || f.Kind == "net-cut") && (o.next.Node == f.Target || d >= length) {
					late = "after"
				}
			}
			fmt.Fprintf(&b, "| +%.1f s | %s %s | %.2f s | %s | %d | %s | %s | %s | %s |\n", f.Start.Sub(start).Seconds(), f.Kind, f.Detail,
				length.Seconds(), f.Target, s, held, next, by, late)
		}
	}

	fmt.Fprintf(&b, "\nfailed attempts the clients retried (each then retried with its idempotency key)\n| answer | count |\n|---|---|\n")
	var classes []string
	for c := range fails {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	for _, c := range classes {
		fmt.Fprintf(&b, "| %s | %d |\n", c, fails[c])
	}

	fmt.Fprintf(&b, "\nfault schedule (%d faults)\n| at | healed after | fault | target | detail | primary of shards |\n|---|---|---|---|---|---|\n", len(n.faults))
	for _, f := range n.faults {
		fmt.Fprintf(&b, "| +%.1f s | %.2f s | %s | %s | %s | %v |\n", f.Start.Sub(start).Seconds(), f.End.Sub(f.Start).Seconds(), f.Kind, f.Target, f.Detail, f.Primary)
	}
	t.Log(b.String())
}

func countTrue(v []bool) int {
	k := 0
	for _, x := range v {
		if x {
			k++
		}
	}
	return k
}

// struckResult is what became of a struck primary's connection.
type struckResult struct {
	held string    // the held connection's fate, for the report
	kept bool      // this fault did not end it (see struckOutcome)
	next *Interval // the shard's first connection after the fault, unless kept
}

// struckOutcome judges a fault on target, the holder of shard at start.
// Only a connection the fault ended makes the shard's next connection the
// fault's cost: a connection that outlived the fault by more than grace
// (unhealthy_interval: by then a frozen holder's deadline has passed and a
// thawed one has renewed or stepped down) was ended by something later, and
// its reconnect belongs to that; so does one that ended after the next
// fault on the same node (later, zero if none) struck.
func struckOutcome(conns []Interval, shard int, target string, start, end, later time.Time, grace time.Duration) struckResult {
	var r struckResult
	var held *Interval
	for i := range conns {
		iv := &conns[i]
		if iv.Shard == shard && iv.Node == target && iv.Start <= start.UnixNano() &&
			(iv.Open || iv.End > start.UnixNano()) && (held == nil || iv.Start > held.Start) {
			held = iv
		}
	}
	switch {
	case held == nil:
		r.held = "not found"
	case held.Open:
		r.held, r.kept = "kept (still open)", true
		return r
	case held.End > end.Add(grace).UnixNano():
		r.held, r.kept = fmt.Sprintf("kept (ended %.2f s after the fault: %s)", time.Duration(held.End-start.UnixNano()).Seconds(), held.EndReason), true
		return r
	case !later.IsZero() && held.End > later.UnixNano():
		r.held, r.kept = fmt.Sprintf("kept until the node's next fault (ended %.2f s after this one, %.2f s after that: %s)",
			time.Duration(held.End-start.UnixNano()).Seconds(), time.Duration(held.End-later.UnixNano()).Seconds(), held.EndReason), true
		return r
	default:
		r.held = fmt.Sprintf("ended after %.2f s: %s", time.Duration(held.End-start.UnixNano()).Seconds(), held.EndReason)
	}
	for i := range conns {
		iv := &conns[i]
		if iv.Shard == shard && iv.Start > start.UnixNano() && (r.next == nil || iv.Start < r.next.Start) {
			r.next = iv
		}
	}
	return r
}
