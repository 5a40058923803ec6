package clustertest

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// procMemory reads VmRSS and VmHWM (peak RSS) of pid, in KiB.
func procMemory(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestStrangersBodiesLeaveCoreappMemoryBounded posts 50 bodies of 100 MB
// without the cluster secret to a coreapp's port, ten at a time: the
// coreapp must refuse them from their headers, so its peak RSS stays
// within 64 MiB of what it was, and it keeps serving members.
func TestStrangersBodiesLeaveCoreappMemoryBounded(t *testing.T) {
	const (
		posts    = 50
		parallel = 10
		size     = 100 << 20
		maxGrow  = 64 << 10 // KiB
	)
	c := New(t, Options{Masters: 1, Coreapps: 1})
	p := c.Coreapps[0]
	rss0, hwm0 := procMemory(t, p.Pid())
	client := &http.Client{Timeout: 60 * time.Second}
	var (
		mu       sync.Mutex
		statuses = map[string]int{}
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, parallel)
	start := time.Now()
	for i := 0; i < posts; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest("POST", "http://"+p.Addr+"/v1/media", io.LimitReader(zeros{}, size))
			req.ContentLength = size
			req.Header.Set("Content-Type", "image/png")
			what := ""
			if resp, err := client.Do(req); err != nil {
				what = "connection closed"
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				what = strconv.Itoa(resp.StatusCode)
			}
			mu.Lock()
			statuses[what]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	rss1, hwm1 := procMemory(t, p.Pid())
	t.Logf("%d unauthenticated posts of %d MiB in %s: answers %v; coreapp VmRSS %d -> %d KiB, VmHWM %d -> %d KiB",
		posts, size>>20, took.Round(time.Millisecond), statuses, rss0, rss1, hwm0, hwm1)
	if statuses["200"]+statuses["201"] > 0 {
		t.Errorf("a stranger's upload was accepted: %v", statuses)
	}
	if hwm1-hwm0 > maxGrow {
		t.Errorf("the coreapp's peak RSS grew by %d KiB, more than %d KiB: it read strangers' bodies", hwm1-hwm0, maxGrow)
	}
	if code, body, err := c.Internal("GET", p.Addr, "/internal/health", ""); err != nil || code != 200 {
		t.Errorf("after the flood the coreapp does not answer a member: %d %s %v", code, body, err)
	}
}
