package delivery

// TestFaultsTable measures what each unknown-outcome policy gives under
// injected faults, with the real parts: the graph client over loopback
// HTTP to the Graph API test server (graphtest, which validates every
// request against Meta's description, injects the faults and sends signed
// status webhooks naming our id in biz_opaque_callback_data). Only the
// Store is in memory here (the MySQL one is tested in store_test.go): a
// status webhook marks the message as the webhook's cloudapi_inbound row
// would. It prints the table of the README's "Exactly once without a
// network-side dedupe".

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

const benchPhone = "1065550100"

// graphPoster posts through the graph client (the plugin has its own,
// which also checks the claim; this one is the bare request) and counts
// the unknown outcomes it sees.
type graphPoster struct {
	c       *graph.Client
	unknown *atomic.Int64
}

func (p graphPoster) Post(ctx context.Context, m Outgoing) (wamid string, err error) {
	defer func() {
		var u *graph.UnknownError
		if errors.As(err, &u) {
			p.unknown.Add(1)
		}
	}()
	var ans struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	err = p.c.Do(ctx, graph.Sender{Node: "bench", Shard: 0, Epoch: 1}, http.MethodPost, "/"+benchPhone+"/messages", "application/json", m.Body, &ans)
	if err != nil {
		return "", err
	}
	if len(ans.Messages) == 0 {
		return "", &graph.UnknownError{Op: "POST messages", Err: fmt.Errorf("no message id in the answer")}
	}
	return ans.Messages[0].ID, nil
}

// statusSink is the webhook receiver: each status naming one of our ids
// reaches the Store after delay (a webhook path that is prompt, or late).
type statusSink struct {
	store *memStore
	delay time.Duration
	wg    sync.WaitGroup
}

func (s *statusSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var doc struct {
		Entry []struct {
			Changes []struct {
				Value struct {
					Statuses []struct {
						ID     string `json:"id"`
						Status string `json:"status"`
						Opaque string `json:"biz_opaque_callback_data"`
					} `json:"statuses"`
				} `json:"value"`
			} `json:"changes"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, e := range doc.Entry {
		for _, c := range e.Changes {
			for _, st := range c.Value.Statuses {
				if st.Opaque == "" {
					continue
				}
				id, status, wamid := st.Opaque, st.Status, st.ID
				s.wg.Add(1)
				time.AfterFunc(s.delay, func() {
					defer s.wg.Done()
					s.store.mu.Lock()
					s.store.status[id] = Seen{Found: true, Status: status, WAMID: wamid}
					s.store.mu.Unlock()
				})
			}
		}
	}
	w.WriteHeader(http.StatusOK)
}

type faultRun struct {
	policy  Policy
	hooks   string // prompt, late
	rate    float64
	n       int
	faults  map[string]int // fault → requests
	sent    int
	failed  int
	failDel int // failed, yet the server took it (the user got it)
	lost    int // failed and never taken
	dups    int // extra copies the server took
	posts   int
	unknown int // unknown outcomes the client saw
	orderOK bool
	took    time.Duration
}

func runFaults(t *testing.T, policy Policy, hooks string, rate float64, n int) faultRun {
	t.Helper()
	const unknownWait = 500 * time.Millisecond
	store := newMemStore()
	sink := &statusSink{store: store}
	if hooks == "late" {
		// The webhook path is down for a while: statuses reach us 2.5 s
		// after Meta sent them, well past UnknownWait (and the cadence of
		// the Sends, which a 1 s timeout slows), within UnknownMaxWait.
		sink.delay = 5 * unknownWait
	}
	hookSrv := httptest.NewServer(sink)
	defer hookSrv.Close()
	gs, err := graphtest.New(graphtest.Config{PhoneNumberIDs: []string{benchPhone}, AccessToken: "bench-token",
		AppSecret: "bench-secret", WebhookURL: hookSrv.URL, Statuses: []string{"sent"}})
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()
	srv := httptest.NewServer(gs)
	defer srv.Close()
	// A timeout of 1 s: long enough that only the injected faults time
	// out on this shared machine, not a request slowed by the load.
	client := graph.New(graph.Config{BaseURL: srv.URL, PhoneNumberID: benchPhone, AccessToken: "bench-token", Timeout: time.Second})

	cfg := Config{Unlimited: true, Node: "bench", Concurrency: 32, Policy: policy,
		UnknownWait: unknownWait, UnknownMaxWait: 10 * unknownWait,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		ThrottleInitial: 50 * time.Millisecond, ThrottleMax: 200 * time.Millisecond,
		PairInitial: 50 * time.Millisecond, PairMax: 200 * time.Millisecond}
	// Warm up before the faults (the server compiles the description's
	// schemas on first use); not counted.
	if err := client.Do(context.Background(), graph.Sender{}, http.MethodPost, "/"+benchPhone+"/messages", "application/json",
		[]byte(`{"messaging_product":"whatsapp","recipient_type":"individual","to":"15559999999","type":"text","text":{"body":"warm-up"}}`), nil); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	for _, f := range []graphtest.Fault{
		{Mode: graphtest.ModeTimeout, Path: "/messages", Fraction: rate / 4, HoldMS: 1500, Processed: true},
		{Mode: graphtest.ModeTimeout, Path: "/messages", Fraction: rate / 4, HoldMS: 1500},
		{Mode: graphtest.ModeCut, Path: "/messages", Fraction: rate / 4, Processed: true},
		{Mode: graphtest.ModeCut, Path: "/messages", Fraction: rate / 4},
	} {
		gs.AddFault(f)
	}
	var unknown atomic.Int64
	e := NewEngine(cfg, graphPoster{client, &unknown}, store)

	// The outbox: every message in order, 100 recipients, batches of 500
	// (the coreapp's) sent again until each is settled (Sent or Failed).
	var pending []Outgoing
	index := map[string]int{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("gBG%06d", i)
		to := fmt.Sprintf("1555%07d", i%100)
		body := fmt.Sprintf(`{"messaging_product":"whatsapp","recipient_type":"individual","to":%q,"type":"text","text":{"body":"message %d"},"biz_opaque_callback_data":%q}`, to, i, id)
		pending = append(pending, Outgoing{ID: id, To: to, Body: []byte(body)})
		index[id] = i
	}
	run := faultRun{policy: policy, hooks: hooks, rate: rate, n: n, faults: map[string]int{}}
	failedIDs := map[string]bool{}
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s/%.2f: %d messages still unsettled after 2 minutes", policy, hooks, rate, len(pending))
		}
		k := min(500, len(pending))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res := e.Send(ctx, pending[:k])
		cancel()
		var rest []Outgoing
		progress := false
		for i, r := range res {
			switch r.Outcome {
			case Sent:
				run.sent++
				progress = true
			case Failed:
				run.failed++
				failedIDs[r.ID] = true
				progress = true
			default:
				rest = append(rest, pending[i])
			}
		}
		pending = append(rest, pending[k:]...)
		if !progress {
			time.Sleep(50 * time.Millisecond)
		}
	}
	run.took = time.Since(start)
	run.unknown = int(unknown.Load())
	sink.wg.Wait()

	st := gs.Snapshot()
	for _, r := range st.Requests[1:] { // after the warm-up
		if strings.HasSuffix(r.Path, "/messages") {
			run.posts++
			if r.Fault != "" {
				run.faults[r.Fault]++
			}
		}
	}
	taken := map[string]int{}
	last := map[string]int{}
	run.orderOK = true
	for _, m := range st.Messages[1:] {
		taken[m.Opaque]++
		i := index[m.Opaque]
		// Per recipient, what the server took never goes back in our
		// order (a resend repeats the same message, then the next).
		if j, ok := last[m.To]; ok && i < j {
			run.orderOK = false
			t.Errorf("%s/%s/%.2f: recipient %s got %s after a later message", policy, hooks, rate, m.To, m.Opaque)
		}
		last[m.To] = i
	}
	for id, c := range taken {
		run.dups += c - 1
		if failedIDs[id] {
			run.failDel++
		}
	}
	for id := range failedIDs {
		if taken[id] == 0 {
			run.lost++
		}
	}
	if run.sent+run.failed != n {
		t.Errorf("%s/%s/%.2f: %d sent + %d failed of %d", policy, hooks, rate, run.sent, run.failed, n)
	}
	return run
}

// TestFaultsTable runs 500 messages at a 10% fault rate under each policy
// and webhook speed (about a minute); MC_FAULTS_TABLE=full runs the
// README's table: 2,000 messages at 2% and 10% (about 3 minutes).
func TestFaultsTable(t *testing.T) {
	n, rates := 500, []float64{0.10}
	if os.Getenv("MC_FAULTS_TABLE") == "full" {
		n, rates = 2000, []float64{0.02, 0.10}
	}
	var runs []faultRun
	for _, rate := range rates {
		for _, hooks := range []string{"prompt", "late"} {
			for _, p := range []Policy{PolicyResend, PolicyFail, PolicyWait} {
				r := runFaults(t, p, hooks, rate, n)
				runs = append(runs, r)
				// What each policy promises, checked.
				switch {
				case p == PolicyResend && r.failed != 0:
					t.Errorf("resend failed %d messages", r.failed)
				case p != PolicyResend && r.dups != 0:
					t.Errorf("%s sent %d duplicates", p, r.dups)
				case hooks == "prompt" && r.dups != 0:
					t.Errorf("%s with prompt webhooks sent %d duplicates", p, r.dups)
				case hooks == "prompt" && r.failDel != 0:
					t.Errorf("%s with prompt webhooks failed %d delivered messages", p, r.failDel)
				case p == PolicyWait && r.failDel != 0:
					t.Errorf("wait failed %d delivered messages (late statuses come within its bound)", r.failDel)
				}
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| policy | webhooks | fault rate | faults: timeout processed / not, cut processed / not | unknown outcomes | sent | failed (delivered / lost) | duplicates | requests | order | time |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range runs {
		order := "kept"
		if !r.orderOK {
			order = "BROKEN"
		}
		fmt.Fprintf(&b, "| %s | %s | %s%% | %d / %d, %d / %d | %d | %d | %d (%d / %d) | %d | %d | %s | %.1f s |\n",
			r.policy, r.hooks, strconv.FormatFloat(r.rate*100, 'f', -1, 64),
			r.faults["timeout (processed)"], r.faults["timeout (not processed)"], r.faults["cut (processed)"], r.faults["cut (not processed)"],
			r.unknown, r.sent, r.failed, r.failDel, r.lost, r.dups, r.posts, order, r.took.Seconds())
	}
	t.Log(b.String())
}
