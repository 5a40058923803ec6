package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stallRedoFlush attaches strace to mariadbd and delays every fsync and
// fdatasync it makes by delay: a disk that takes that long to make a write
// durable. InnoDB makes a transaction visible to other sessions when it
// commits in memory, before its redo log reaches the disk; a commit that
// comes while another one is being flushed waits for that flush before its
// own log is even written. A SIGKILL of mariadbd during the delay loses
// such a commit, though other sessions read its rows. strace ends with the
// server.
func stallRedoFlush(t *testing.T, pid int, delay time.Duration) *exec.Cmd {
	t.Helper()
	bin, err := exec.LookPath("strace")
	if err != nil {
		t.Fatal("strace is not installed (`apt-get install -y strace`): it is what slows the server's fsyncs")
	}
	us := strconv.FormatInt(delay.Microseconds(), 10)
	cmd := exec.Command(bin, "-f", "-p", strconv.Itoa(pid), "-o", "/dev/null",
		"-e", "trace=fsync,fdatasync", "-e", "inject=fsync,fdatasync:delay_enter="+us)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("strace: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// strace says "Process N attached" for each thread it traces.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "attached") {
		if time.Now().After(deadline) {
			t.Fatalf("strace did not attach to mariadbd: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the other threads
	return cmd
}

// The nemesis found one message reach the network twice under two ids:
// the first attempt was never acknowledged, its retry (same idempotency
// key) was, and the idempotency scope's UNIQUE key should have made the
// retry return the first id. The first row was committed in memory and
// read by the outbox, which sent it, but its redo log had not reached the
// disk when mariadbd was killed: crash recovery rolled it back, so the
// retry found no row with its scope and stored a new one.
//
// This test forces that interleaving: a commit holds the redo log's flush
// (fsyncs are delayed by strace), a message is accepted meanwhile (its
// COMMIT waits behind that flush, its row already visible), and mariadbd
// is killed before the flush ends. Meanwhile the client, tired of
// waiting, retries with the same key: that retry finds the first row and
// must not answer 201 with its id before the row is durable (it did: the
// row was lost with the crash, an acknowledged message). After the crash
// the client retries until it gets 201. The network must then hold the
// message once, under the acknowledged id: a row may reach the network,
// and its id a client, only once it is durable.
func TestOutboxSendsOnlyDurableRows(t *testing.T) {
	// A long unhealthy_interval: the slowed server must not cost the
	// primary its claim while the test holds the flush.
	c := New(t, Options{Shards: 1, Coreapps: 1, Heartbeat: 1, Unhealthy: 15})
	to := "15550474218"
	ctx := context.Background()
	body := func(n int) string {
		return fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"durable %s #%d"}}`, to, to, n)
	}
	code, first, b, err := c.PostMessage(ctx, to, body(0), "durable-0")
	if err != nil || code != 201 {
		t.Fatalf("first message: %d %s %v", code, b, err)
	}
	c.Eventually(10*time.Second, "the first message at the network", func() error {
		if len(c.NetworkMessages(to)) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if _, err := c.SQL.Exec(`CREATE TABLE durability_probe (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SQL.Exec(`INSERT INTO durability_probe VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	primary, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}

	stallRedoFlush(t, c.DB.PID(), 6*time.Second)
	// This commit writes its log and then waits 6 s in fdatasync, holding
	// the flush: every commit after it waits behind, visible but not written.
	go c.SQL.Exec(`UPDATE durability_probe SET n = n + 1 WHERE id = 1`)
	time.Sleep(300 * time.Millisecond)
	type answer struct {
		code int
		id   string
		body []byte
		err  error
		at   time.Time
	}
	// post sends message #1 with its key to the primary in the background.
	post := func() <-chan answer {
		out := make(chan answer, 1)
		go func() {
			actx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			code, id, b, err := c.PostMessageTo(actx, primary, body(1), "durable-1")
			out <- answer{code, id, b, err, time.Now()}
		}()
		return out
	}
	firstTry := post()
	// The client gives up on the first attempt and retries with the same
	// key: the retry finds the first row (visible, not yet durable) and
	// must not answer 201 with its id before that row is on disk.
	time.Sleep(700 * time.Millisecond)
	retry := post()
	// Until the flush would end: does the message reach the network while
	// its COMMIT has not returned?
	early := ""
	deadline := time.Now().Add(3500 * time.Millisecond) // before the client's 5 s timeout
	// Stop early once both happened: the message at the network, the
	// retry answered.
	for time.Now().Before(deadline) && (early == "" || len(retry) == 0) && len(firstTry) == 0 {
		for _, m := range c.NetworkMessages(to) {
			if strings.Contains(string(m.Body), "#1") {
				early = m.ID
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case a := <-firstTry:
		t.Fatalf("the first attempt was answered (%d %s %v) while the redo log flush was held: the test did not stall the commit", a.code, a.id, a.err)
	default:
	}
	killed := time.Now()
	c.DB.Kill()
	if early != "" {
		t.Logf("message #1 reached the network as %s while its COMMIT was still waiting for the disk", early)
	}
	a := <-firstTry
	if a.code == 201 {
		t.Fatalf("the first attempt got 201 (%s) though mariadbd died before its commit was durable", a.id)
	}
	t.Logf("first attempt, answered %.2f s after the crash: %d %s %v", a.at.Sub(killed).Seconds(), a.code, a.body, a.err)
	if r := <-retry; r.code == 201 {
		t.Errorf("the retry was acknowledged (201, %s) while the first attempt's row, which it returned, was not durable; mariadbd then crashed", r.id)
	} else {
		t.Logf("retry during the stall, answered %.2f s after the crash: %d %s %v", r.at.Sub(killed).Seconds(), r.code, r.body, r.err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := c.DB.Start(); err != nil {
		t.Fatalf("restart mariadbd: %v", err)
	}

	// The client retries with the same key until it is acknowledged.
	var acked string
	c.Eventually(60*time.Second, "the retry acknowledged", func() error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		code, id, b, err := c.PostMessage(rctx, to, body(1), "durable-1")
		if err != nil || code != 201 {
			return fmt.Errorf("%d %s %v", code, b, err)
		}
		acked = id
		return nil
	})
	c.Eventually(30*time.Second, "the acknowledged message at the network", func() error {
		for _, m := range c.NetworkMessages(to) {
			if m.ID == acked {
				return nil
			}
		}
		return fmt.Errorf("%s not at the network yet", acked)
	})
	time.Sleep(time.Second) // anything else on its way
	var ids []string
	for _, m := range c.NetworkMessages(to) {
		if strings.Contains(string(m.Body), "#1") {
			ids = append(ids, m.ID)
		}
	}
	if len(ids) != 1 || ids[0] != acked {
		t.Fatalf("message #1 reached the network as %v; want once, as the acknowledged %s (the first message was %s)", ids, acked, first)
	}
}
