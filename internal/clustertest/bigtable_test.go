package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

const (
	bigStored = 5_000_000 // sent messages a long-lived cluster holds
	bigOld    = 50_000    // of which past the 30-day retention: one GC run's work
)

// Re-sharding and the garbage collector on a cluster holding 5 million
// sent messages, under steady traffic: the shard count change must not
// hold accepts (p99 accept latency under 1 s across it) nor cost the
// master its lease, and the collector must delete in short batches that
// leave the lease alone too. The figures are printed.
func TestReshardAndGCWithMillionsOfRows(t *testing.T) {
	c := New(t, Options{Shards: 2, Coreapps: 5, MasterEnv: []string{"MC_GC_INTERVAL=1s"}})
	c.PatchSettings(`{"garbagecollector_enable":{"messages":false,"media":false}}`)
	loaded := time.Now()
	c.loadSentMessages(bigStored, bigOld)
	t.Logf("loaded %d sent messages (%d past retention) in %v", bigStored, bigOld, time.Since(loaded).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ld := startTimedSenders(ctx, c, recipients(c, 32))
	defer ld.stop(t)
	holder, epoch := c.masterLease()
	time.Sleep(2 * time.Second)
	steady := ld.p99(time.Now().Add(-2*time.Second), time.Now())

	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, out, err := c.internalSlow("POST", primary, "/v1/account/shards", `{"shards":4}`)
	took := time.Since(start)
	if err != nil || code != 201 {
		t.Fatalf("POST shards 4: %d %s %v (after %v)", code, out, err, took)
	}
	time.Sleep(time.Second) // sends that waited on the change finish
	during, n := ld.p99(start, start.Add(took)), ld.count(start, start.Add(took))
	if n == 0 {
		t.Fatal("no send overlapped the re-shard: nothing measured")
	}
	t.Logf("re-shard 2 -> 4 took %v; p99 accept latency %v over the %d sends overlapping it (%v before)",
		took.Round(time.Millisecond), during.Round(time.Millisecond), n, steady.Round(time.Millisecond))
	if h, e := c.masterLease(); e != epoch || h != holder {
		t.Errorf("the master lease changed hands during the re-shard: epoch %d -> %d", epoch, e)
	}
	if during >= time.Second {
		t.Errorf("p99 accept latency across the re-shard is %v, want under 1 s", during)
	}

	holder, epoch = c.masterLease()
	gcStart := time.Now()
	c.PatchSettings(`{"garbagecollector_enable":{"messages":true,"media":false}}`)
	c.Eventually(60*time.Second, "the messages past retention collected", func() error {
		var old int
		if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE id LIKE 'bulk%' AND sent_at < NOW(6) - INTERVAL 30 DAY`).Scan(&old); err != nil {
			return err
		}
		if old > 0 {
			return fmt.Errorf("%d left", old)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // a whole collector run ends, and the run after it
	gcEnd := time.Now()
	batches := c.gcBatches("messages")
	var maxBatch, sum time.Duration
	rows := 0
	for _, b := range batches {
		sum += b.took
		maxBatch = max(maxBatch, b.took)
		rows += b.rows
		if b.rows > 1000 {
			t.Errorf("a batch deleted %d rows, want at most 1000", b.rows)
		}
	}
	if len(batches) == 0 {
		t.Fatal("the collector logged no batch of messages")
	}
	t.Logf("GC deleted %d messages in %d batches over %v: batch mean %v, max %v; p99 accept latency meanwhile %v",
		rows, len(batches), gcEnd.Sub(gcStart).Round(time.Millisecond), (sum / time.Duration(len(batches))).Round(time.Microsecond),
		maxBatch.Round(time.Microsecond), ld.p99(gcStart, gcEnd).Round(time.Millisecond))
	if h, e := c.masterLease(); e != epoch || h != holder {
		t.Errorf("the master lease changed hands during the collection: epoch %d -> %d", epoch, e)
	}
	if p := ld.p99(gcStart, gcEnd); p >= time.Second {
		t.Errorf("p99 accept latency during the collection is %v, want under 1 s", p)
	}
	var left int
	c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE id LIKE 'bulk%'`).Scan(&left)
	if left != bigStored-bigOld {
		t.Errorf("%d stored messages left, want the %d within retention", left, bigStored-bigOld)
	}
	ld.stop(t)
	c.RequireNoViolations()
}

// loadSentMessages stores total sent messages straight into MariaDB, the
// first old of them sent 60 days ago, the rest a day ago. Ids, recipients
// and times grow with the row number, as in a cluster's life, so every
// index is appended to; MariaDB's sequence tables generate the rows in
// 500,000-row INSERT ... SELECT statements. The table's indexes are the
// schema's again when it returns.
func (c *Cluster) loadSentMessages(total, old int) {
	c.T.Helper()
	ctx := context.Background()
	conn, err := c.SQL.Conn(ctx)
	if err != nil {
		c.T.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{
		// A production server's buffer pool holds its working set and its
		// redo log absorbs bursts; the test server's 64 MiB pool and small
		// log would make this a disk benchmark.
		`SET GLOBAL innodb_buffer_pool_size = 1024 * 1024 * 1024`,
		`SET GLOBAL innodb_log_file_size = 512 * 1024 * 1024`,
		`SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED`,
		`SET @old = NOW(6) - INTERVAL 60 DAY, @recent = NOW(6) - INTERVAL 1 DAY`,
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			c.T.Fatalf("%s: %v", q, err)
		}
	}
	// Secondary indexes are built once, sorted, after the load rather than
	// row by row: all but the outbox's, which the coreapps poll meanwhile.
	var drop, add []string
	rows, err := conn.QueryContext(ctx, `SELECT index_name, MIN(non_unique), GROUP_CONCAT(column_name ORDER BY seq_in_index)
		FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'messages'
		AND index_name NOT IN ('PRIMARY', 'messages_outbox') GROUP BY index_name`)
	if err != nil {
		c.T.Fatal(err)
	}
	for rows.Next() {
		var name, cols string
		var nonUnique int
		if err := rows.Scan(&name, &nonUnique, &cols); err != nil {
			c.T.Fatal(err)
		}
		kind := "UNIQUE INDEX"
		if nonUnique == 1 {
			kind = "INDEX"
		}
		drop = append(drop, "DROP INDEX "+name)
		add = append(add, fmt.Sprintf("ADD %s %s (%s)", kind, name, cols))
	}
	rows.Close()
	if len(drop) > 0 {
		if _, err := conn.ExecContext(ctx, `ALTER TABLE messages `+strings.Join(drop, ", ")); err != nil {
			c.T.Fatal(err)
		}
	}
	const chunk = 500_000
	for from := 1; from <= total; from += chunk {
		to := min(from+chunk-1, total)
		q := fmt.Sprintf(`INSERT INTO messages (id, shard_id, recipient, type, body, state, accepted_at, sent_at)
			SELECT CONCAT('bulk', LPAD(seq, 10, '0')), 0, CONCAT('1', LPAD(seq, 10, '0')), 'text', '{"body":"x"}', 1,
				IF(seq <= %[1]d, @old, @recent) + INTERVAL seq MICROSECOND, IF(seq <= %[1]d, @old, @recent) + INTERVAL seq MICROSECOND
			FROM seq_1_to_%[2]d WHERE seq BETWEEN %[3]d AND %[4]d`, old, total, from, to)
		if _, err := conn.ExecContext(ctx, q); err != nil {
			c.T.Fatalf("load rows %d-%d: %v", from, to, err)
		}
	}
	if len(add) > 0 {
		if _, err := conn.ExecContext(ctx, `ALTER TABLE messages `+strings.Join(add, ", ")); err != nil {
			c.T.Fatalf("rebuild indexes %v: %v", add, err)
		}
	}
}

// internalSlow is Internal with a minute to answer, so a slow request is
// measured rather than cut off.
func (c *Cluster) internalSlow(method, addr, path, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set(cluster.SecretHeader, c.Secret)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

type gcBatch struct {
	rows int
	took time.Duration
}

// gcBatches reads the masters' logs for the collector's batches of table.
// A line that carries no duration (a build that did not log it) counts
// the time since the previous batch's line.
func (c *Cluster) gcBatches(table string) []gcBatch {
	var out []gcBatch
	for _, m := range c.Masters {
		f, err := os.Open(m.LogPath)
		if err != nil {
			continue
		}
		var prev time.Time
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l struct {
				Time    time.Time `json:"time"`
				Msg     string    `json:"msg"`
				Table   string    `json:"table"`
				Rows    int       `json:"rows"`
				Seconds *float64  `json:"seconds"`
			}
			if !strings.Contains(sc.Text(), "garbage collected") || json.Unmarshal(sc.Bytes(), &l) != nil || l.Table != table {
				continue
			}
			b := gcBatch{rows: l.Rows}
			switch {
			case l.Seconds != nil:
				b.took = time.Duration(*l.Seconds * float64(time.Second))
			case !prev.IsZero():
				b.took = l.Time.Sub(prev)
			}
			prev = l.Time
			out = append(out, b)
		}
		f.Close()
	}
	return out
}

// timedSenders keeps one client per recipient sending, each message
// retried with its idempotency key until accepted, and records when each
// send started and how long it took to its 201: a client's accept latency.
type timedSenders struct {
	mu    sync.Mutex
	sends []timedSend
	quit  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
	errs  chan error
}

type timedSend struct {
	start time.Time
	took  time.Duration // -1 while in flight
}

func startTimedSenders(ctx context.Context, c *Cluster, tos []string) *timedSenders {
	s := &timedSenders{quit: make(chan struct{}), errs: make(chan error, len(tos))}
	for _, to := range tos {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for j := 0; ; j++ {
				select {
				case <-s.quit:
					return
				default:
				}
				start := time.Now()
				s.mu.Lock()
				k := len(s.sends)
				s.sends = append(s.sends, timedSend{start: start, took: -1})
				s.mu.Unlock()
				body := fmt.Sprintf(`{"to":%q,"text":{"body":"timed %d"}}`, to, j)
				if _, err := sendUntilAccepted(ctx, c, to, body, fmt.Sprintf("timed-%s-%d", to, j)); err != nil {
					s.errs <- fmt.Errorf("recipient %s message %d: %w", to, j, err)
					return
				}
				s.mu.Lock()
				s.sends[k].took = time.Since(start)
				s.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return s
}

// overlapping returns the latencies of the sends that overlap [from, to];
// one still in flight counts the time it has waited so far.
func (s *timedSenders) overlapping(from, to time.Time) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Duration
	for _, x := range s.sends {
		took := x.took
		if took < 0 {
			took = time.Since(x.start)
		}
		if !x.start.After(to) && !x.start.Add(took).Before(from) {
			out = append(out, took)
		}
	}
	return out
}

func (s *timedSenders) count(from, to time.Time) int { return len(s.overlapping(from, to)) }

// p99 is the 99th percentile latency of the sends overlapping [from, to].
func (s *timedSenders) p99(from, to time.Time) time.Duration {
	d := s.overlapping(from, to)
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(math.Ceil(0.99*float64(len(d))))-1]
}

func (s *timedSenders) stop(t *testing.T) {
	t.Helper()
	s.once.Do(func() {
		close(s.quit)
		s.wg.Wait()
		close(s.errs)
		for err := range s.errs {
			t.Error(err)
		}
	})
}
