package clustertest

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The nemesis's fault kinds, as MC_NEMESIS_FAULTS names them.
var nemesisKinds = []string{
	"coreapp-kill",    // SIGKILL a coreapp (its plugin dies with it), restart it 0.5-3 s later
	"freeze-long",     // SIGSTOP a coreapp, with or without its plugin, 1.5-5 s (> unhealthy_interval)
	"freeze-short",    // the same for 0.1-0.8 s
	"plugin-kill",     // SIGKILL a coreapp's transport plugin (the coreapp starts a new one)
	"master-kill",     // SIGKILL a master, restart it 0.5-3 s later
	"db-crash",        // SIGKILL mariadbd, restart it on the same data 0.5-3 s later
	"gateway-restart", // SIGKILL the gateway, start it again 0.2-1.5 s later
	"db-slow",         // 10-80 ms latency on every node's MySQL path for 2-8 s
	"net-cut",         // black-hole a coreapp's path to the network for 1.5-6 s
	"reshard",         // POST /v1/account/shards, 2 <-> 4, through the gateway
}

// nemesisHeldBack are the kinds left out of the default run, each with the
// open problem that makes a run with it fail today; MC_NEMESIS_FAULTS=all
// (or naming them) brings them back.
// (None today: reshard was held back until the network learned the shard
// count, see transport.Layout.)
var nemesisHeldBack = map[string]string{}

// fullOutage kinds take the whole cluster down on purpose.
var fullOutage = map[string]bool{"db-crash": true, "gateway-restart": true}

// fault is one fault of the schedule.
type fault struct {
	Kind, Target, Detail string
	Start, End           time.Time // End: healed (restarted process answering, path restored)
	Primary              []int     // shards the target held (open connection) when it struck
	dur                  time.Duration
}

// nemesis owns the cluster's processes while faults run: slots whose
// process is replaced on restart.
type nemesis struct {
	c        *Cluster
	rng      *rand.Rand
	kinds    []string
	caddyBin string
	gwURL    string
	token    string

	mu       sync.Mutex
	coreapps []*Proc
	masters  []*Proc
	gw       *Proc
	netProxy map[string]*Proxy // by coreapp address
	busy     map[string]bool
	faults   []*fault
	restarts int
	shards   []shardCount // the count over time, as the test set it
	errs     []string     // problems the faults met (restart failed, ...)
	hc       *http.Client
}

type shardCount struct {
	at time.Time
	n  int
}

func (n *nemesis) errorf(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.errs = append(n.errs, fmt.Sprintf(format, args...))
}

// shardCountAt is the shard count in force at t.
func (n *nemesis) shardCountAt(t time.Time) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.shards[0].n
	for _, s := range n.shards {
		if !s.at.After(t) {
			cur = s.n
		}
	}
	return cur
}

// openConnections asks the network which node holds which shard now (no
// database needed, so it works while MariaDB is down).
func (n *nemesis) openConnections() (map[string][]int, error) {
	var out struct {
		Connections []Interval `json:"connections"`
	}
	if err := n.c.SimnetJSON("/v1/connections", &out); err != nil {
		return nil, err
	}
	held := map[string][]int{}
	for _, iv := range out.Connections {
		if iv.Open {
			held[iv.Node] = append(held[iv.Node], iv.Shard)
		}
	}
	return held, nil
}

// pickCoreapp chooses a free coreapp slot, a connected primary two times in
// three (faults on idle spares teach little), and marks it busy.
func (n *nemesis) pickCoreapp() (int, bool) {
	held, _ := n.openConnections()
	n.mu.Lock()
	defer n.mu.Unlock()
	var free, primaries []int
	for i, p := range n.coreapps {
		if n.busy[p.Addr] {
			continue
		}
		free = append(free, i)
		if len(held[p.Addr]) > 0 {
			primaries = append(primaries, i)
		}
	}
	if len(free) == 0 {
		return 0, false
	}
	pick := free[n.rng.Intn(len(free))]
	if len(primaries) > 0 && n.rng.Intn(3) > 0 {
		pick = primaries[n.rng.Intn(len(primaries))]
	}
	n.busy[n.coreapps[pick].Addr] = true
	return pick, true
}

func (n *nemesis) claim(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.busy[key] {
		return false
	}
	n.busy[key] = true
	return true
}

func (n *nemesis) release(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.busy, key)
}

func (n *nemesis) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(n.rng.Int63n(int64(hi-lo)+1))
}

// run starts random faults until end, at most two at a time, each healed
// within a bounded time, and returns once every fault is healed.
func (n *nemesis) run(end time.Time) {
	var wg sync.WaitGroup
	active := make(chan struct{}, 2)
	for {
		time.Sleep(n.between(200*time.Millisecond, 1500*time.Millisecond))
		if time.Now().After(end) {
			break
		}
		select {
		case active <- struct{}{}:
		default:
			continue // two faults already
		}
		f := n.plan(end)
		if f == nil {
			<-active
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-active }()
			n.strike(f)
		}()
	}
	wg.Wait()
}

// plan chooses the next fault (nil: none fits now). Every random choice is
// made here, in one goroutine, so a seed gives one schedule of decisions.
func (n *nemesis) plan(end time.Time) *fault {
	kind := n.kinds[n.rng.Intn(len(n.kinds))]
	f := &fault{Kind: kind}
	switch kind {
	case "coreapp-kill", "freeze-long", "freeze-short", "plugin-kill", "net-cut":
		switch kind {
		case "coreapp-kill":
			f.dur = n.between(500*time.Millisecond, 3*time.Second)
		case "freeze-long":
			f.dur = n.between(1500*time.Millisecond, 5*time.Second)
		case "freeze-short":
			f.dur = n.between(100*time.Millisecond, 800*time.Millisecond)
		case "plugin-kill":
			f.dur = time.Second // the slot stays busy while the plugin restarts
		case "net-cut":
			f.dur = n.between(1500*time.Millisecond, 6*time.Second)
		}
		if strings.HasPrefix(kind, "freeze") {
			f.Detail = "coreapp only"
			if n.rng.Intn(2) == 0 {
				f.Detail = "with plugin"
			}
		}
		if time.Now().Add(f.dur).After(end) {
			return nil
		}
		i, ok := n.pickCoreapp()
		if !ok {
			return nil
		}
		n.mu.Lock()
		f.Target = n.coreapps[i].Addr
		n.mu.Unlock()
	case "master-kill":
		f.dur = n.between(500*time.Millisecond, 3*time.Second)
		i := n.rng.Intn(len(n.masters))
		n.mu.Lock()
		f.Target = n.masters[i].Addr
		n.mu.Unlock()
		if !n.claim(f.Target) {
			return nil
		}
	case "db-crash":
		f.dur = n.between(500*time.Millisecond, 3*time.Second)
		f.Target = "mariadbd"
	case "gateway-restart":
		f.dur = n.between(200*time.Millisecond, 1500*time.Millisecond)
		f.Target = "gateway"
	case "db-slow":
		f.dur = n.between(2*time.Second, 8*time.Second)
		f.Target = "mysql path"
		f.Detail = fmt.Sprintf("%v per chunk", n.between(10*time.Millisecond, 80*time.Millisecond).Round(time.Millisecond))
	case "reshard":
		f.dur = 3 * time.Second // no other re-shard meanwhile
		f.Target = "shard count"
	}
	if kind == "db-crash" || kind == "gateway-restart" || kind == "db-slow" || kind == "reshard" {
		if !n.claim(f.Target) {
			return nil
		}
	}
	if time.Now().Add(f.dur).After(end) {
		n.release(f.Target)
		return nil
	}
	return f
}

// strike applies f, waits, heals it and records it.
func (n *nemesis) strike(f *fault) {
	defer n.release(f.Target)
	held, err := n.openConnections()
	if err == nil {
		f.Primary = held[f.Target]
		sort.Ints(f.Primary)
	}
	f.Start = time.Now()
	switch f.Kind {
	case "coreapp-kill":
		p := n.slot(&n.coreapps, f.Target)
		p.Kill()
		time.Sleep(f.dur)
		n.replace(&n.coreapps, f.Target, n.c.Restart(p, n.nextName(p.Name)))
	case "freeze-long", "freeze-short":
		p := n.slot(&n.coreapps, f.Target)
		pids := []int{p.Pid()}
		if f.Detail == "with plugin" {
			pids = append(pids, p.Children()...)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
		time.Sleep(f.dur)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	case "plugin-kill":
		p := n.slot(&n.coreapps, f.Target)
		kids := p.Children()
		for _, pid := range kids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		f.Detail = fmt.Sprintf("pids %v", kids)
		time.Sleep(f.dur)
	case "net-cut":
		px := n.netProxy[f.Target]
		px.Cut()
		time.Sleep(f.dur)
		px.Heal()
	case "master-kill":
		p := n.slot(&n.masters, f.Target)
		if lease, err := n.c.PrimaryMasterAddr(); err == nil && lease == f.Target {
			f.Detail = "primary"
		} else {
			f.Detail = "secondary"
		}
		p.Kill()
		time.Sleep(f.dur)
		n.replace(&n.masters, f.Target, n.c.Restart(p, n.nextName(p.Name)))
	case "db-crash":
		n.c.DB.Kill()
		time.Sleep(f.dur)
		if err := n.c.DB.Start(); err != nil {
			n.errorf("restart mariadbd after a crash: %v", err)
		}
	case "gateway-restart":
		n.mu.Lock()
		p := n.gw
		n.mu.Unlock()
		p.Kill()
		time.Sleep(f.dur)
		np := n.c.Restart(p, n.nextName(p.Name))
		n.mu.Lock()
		n.gw = np
		n.mu.Unlock()
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := n.hc.Get(n.gwURL + "/")
			if err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				n.errorf("the restarted gateway did not answer within 20 s: %v", err)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	case "db-slow":
		d, _ := time.ParseDuration(strings.Fields(f.Detail)[0])
		n.c.DBProxy.SetDelay(d)
		time.Sleep(f.dur)
		n.c.DBProxy.SetDelay(0)
	case "reshard":
		f.Detail = n.reshard()
	}
	f.End = time.Now()
	n.mu.Lock()
	n.faults = append(n.faults, f)
	n.mu.Unlock()
}

// reshard asks the gateway to switch between 2 and 4 shards, as an
// operator would, then reads the count the database holds (an answer lost
// in a fault may hide a change that was made).
func (n *nemesis) reshard() string {
	from := n.shardCountAt(time.Now())
	to := 6 - from // 2 <-> 4
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", n.gwURL+"/v1/account/shards", strings.NewReader(fmt.Sprintf(`{"shards":%d}`, to)))
	req.Header.Set("Authorization", "Bearer "+n.token)
	req.Header.Set("Content-Type", "application/json")
	answer := ""
	if resp, err := n.hc.Do(req); err != nil {
		answer = err.Error()
	} else {
		var b strings.Builder
		fmt.Fprintf(&b, "HTTP %d", resp.StatusCode)
		if resp.StatusCode != 201 {
			buf := make([]byte, 160)
			k, _ := resp.Body.Read(buf)
			fmt.Fprintf(&b, " %s", strings.TrimSpace(string(buf[:k])))
		}
		resp.Body.Close()
		answer = b.String()
	}
	now := from
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := n.c.SQL.QueryRow(`SELECT shards FROM cluster WHERE id = 1`).Scan(&now)
		if err == nil {
			break
		}
		if err != sql.ErrNoRows && time.Now().After(deadline) {
			n.errorf("read the shard count after a re-shard: %v", err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now != from {
		n.mu.Lock()
		n.shards = append(n.shards, shardCount{time.Now(), now})
		n.mu.Unlock()
	}
	return fmt.Sprintf("%d -> %d: %s; count now %d", from, to, answer, now)
}

func (n *nemesis) slot(list *[]*Proc, addr string) *Proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range *list {
		if p.Addr == addr {
			return p
		}
	}
	panic("no process at " + addr)
}

func (n *nemesis) replace(list *[]*Proc, addr string, np *Proc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, p := range *list {
		if p.Addr == addr {
			(*list)[i] = np
		}
	}
}

func (n *nemesis) nextName(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	base, _, _ := strings.Cut(name, ".")
	n.restarts++
	return fmt.Sprintf("%s.r%d", base, n.restarts)
}

// healAll makes sure nothing is left frozen, slow or cut.
func (n *nemesis) healAll() {
	n.c.DBProxy.SetDelay(0)
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, px := range n.netProxy {
		px.Heal()
	}
	for _, p := range n.coreapps {
		p.Signal(syscall.SIGCONT)
		for _, k := range p.Children() {
			syscall.Kill(k, syscall.SIGCONT)
		}
	}
}
