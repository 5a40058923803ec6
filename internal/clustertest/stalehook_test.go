package clustertest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// hookPost is one webhook POST as the receiver saw it.
type hookPost struct {
	at                time.Time
	fromPID           int // the process whose socket sent it, 0 if none of those asked about
	shard, epoch, seq string
}

// heldHook is a webhook receiver that holds every request until released
// (so a POST can be in flight when its sender is frozen) and records who
// sent each one: the receiver finds the sending socket's owner in /proc,
// so it needs nothing from the sender to tell a stale primary's POST.
type heldHook struct {
	url     string
	failing atomic.Bool // answer 500 (after recording) instead of holding
	pids    []int
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	posts   []hookPost
}

func startHeldHook(t *testing.T, pids ...int) *heldHook {
	h := &heldHook{pids: pids, release: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String() + "/hook"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := hookPost{at: time.Now(), fromPID: socketOwner(r.RemoteAddr, h.pids),
			shard: r.Header.Get("X-Multiconnect-Shard"), epoch: r.Header.Get("X-Multiconnect-Epoch"),
			seq: r.Header.Get("X-Multiconnect-Sequence")}
		io.Copy(io.Discard, r.Body)
		h.mu.Lock()
		h.posts = append(h.posts, p)
		h.mu.Unlock()
		if h.failing.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		select {
		case <-h.release:
		case <-time.After(20 * time.Second):
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { h.open(); srv.Close() })
	return h
}

// open releases held requests and stops holding new ones.
func (h *heldHook) open() { h.once.Do(func() { close(h.release) }) }

func (h *heldHook) snapshot() []hookPost {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookPost(nil), h.posts...)
}

// socketOwner returns which of pids has a socket whose local address is
// remote (the client side of a loopback connection), or 0.
func socketOwner(remote string, pids []int) int {
	_, port, err := net.SplitHostPort(remote)
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(port)
	inode := ""
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	want := fmt.Sprintf("0100007F:%04X", p)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 9 && fields[1] == want {
			inode = fields[9]
			break
		}
	}
	if inode == "" {
		return 0
	}
	for _, pid := range pids {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fd); l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

// Scenario 10 of issue 12 (first item): a primary frozen with webhook
// POSTs in flight and more queued, thawed after its shard failed over,
// posts nothing more; every POST names shard, epoch and sequence.
func TestThawedPrimaryPostsNoStaleWebhook(t *testing.T) {
	c := New(t, Options{Shards: 1, Coreapps: 2})
	iv := c.WaitConnected(0, "", 10*time.Second)
	old := c.CoreappByAddr(iv.Node)
	hook := startHeldHook(t, old.Pid())
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":24},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":200}`, hook.url))
	time.Sleep(600 * time.Millisecond) // settings reach every node within one 200 ms poll

	// Inbound messages for 12 recipients: callbacks in every lane. The
	// first wave's POSTs are held in flight; the second wave is loaded and
	// queued behind them, so the frozen primary has more to post.
	tos := recipients(c, 48)
	inbound := func(wave int) {
		for i, to := range tos {
			id := fmt.Sprintf("in-%d-%d", wave, i)
			if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": 0, "id": id, "recipient": to,
				"payload": map[string]any{"type": "text", "text": map[string]string{"body": id}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The webhook refuses until the primary is frozen, so its lanes are
	// asleep in their retry backoff or have a POST in flight then, with
	// more callbacks queued behind.
	hook.failing.Store(true)
	inbound(1)
	inbound(2)
	c.Eventually(10*time.Second, "webhook POSTs refused and retried", func() error {
		if n := len(hook.snapshot()); n < 60 {
			return fmt.Errorf("%d POSTs", n)
		}
		return nil
	})
	old.Signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	hook.failing.Store(false)
	hook.open()
	c.WaitConnected(0, old.Addr, 10*time.Second)
	c.Eventually(10*time.Second, "the new primary delivers callbacks", func() error {
		for _, p := range hook.snapshot() {
			if p.at.After(frozenAt) && p.fromPID == 0 {
				return nil
			}
		}
		return fmt.Errorf("no POST from the new primary yet")
	})
	old.Signal(syscall.SIGCONT)
	thawed := time.Now()
	t.Logf("froze %s for %v", old.Addr, thawed.Sub(frozenAt))
	time.Sleep(3 * time.Second)

	posts := hook.snapshot()
	before, stale := 0, 0
	for _, p := range posts {
		if p.fromPID != old.Pid() {
			continue
		}
		if p.at.After(thawed) {
			stale++
			t.Errorf("the deposed primary posted after its thaw (%v later), epoch header %q", p.at.Sub(thawed), p.epoch)
		} else {
			before++
		}
	}
	t.Logf("%d POSTs in all; %d from the old primary before its freeze, %d after its thaw", len(posts), before, stale)
	seen := map[string]bool{}
	for _, p := range posts {
		if p.shard != "0" || p.epoch == "" || p.seq == "" {
			t.Errorf("POST without shard/epoch/sequence headers: shard %q epoch %q sequence %q", p.shard, p.epoch, p.seq)
			continue
		}
		if k := p.epoch + "/" + p.seq; seen[k] {
			t.Errorf("two POSTs with epoch %s sequence %s", p.epoch, p.seq)
		} else {
			seen[k] = true
		}
	}
}
