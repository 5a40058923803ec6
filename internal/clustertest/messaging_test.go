package clustertest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sendUntilAccepted posts one message, retrying with the same idempotency
// key until a coreapp answers 201 (a failover answers 1018 or drops the
// connection meanwhile). The key makes a retry of a request that was
// committed but whose answer was lost return the first id.
func sendUntilAccepted(ctx context.Context, c *Cluster, to, body, key string) (string, error) {
	var last string
	for ctx.Err() == nil {
		code, id, b, err := c.PostMessage(ctx, to, body, key)
		if err == nil && code == 201 {
			return id, nil
		}
		last = fmt.Sprintf("HTTP %d %s %v", code, b, err)
		if code == 400 || code == 404 {
			return "", errors.New(last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("not accepted before the deadline: %s", last)
}

// recipients returns n recipients spread over every shard of c.
func recipients(c *Cluster, n int) []string {
	var out []string
	perShard := map[int]int{}
	for i := 0; len(out) < n; i++ {
		to := strconv.Itoa(15550100000 + i*7919)
		if s := c.ShardOf(to); perShard[s] < (n+c.Opts.Shards-1)/c.Opts.Shards {
			perShard[s]++
			out = append(out, to)
		}
	}
	return out
}

// senders is one client per recipient, each sending its messages one after
// another (the next only after the previous got its 201), so acceptance
// order per recipient is well defined.
type senders struct {
	accepted [][]string // per recipient, the ids in acceptance order
	total    atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
	errs     chan error
}

// startSenders starts them: each sends up to n messages (0: until stop),
// pausing between sends.
func startSenders(ctx context.Context, c *Cluster, tos []string, n int, pause time.Duration) *senders {
	s := &senders{accepted: make([][]string, len(tos)), stop: make(chan struct{}), errs: make(chan error, len(tos))}
	for i, to := range tos {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for j := 0; n == 0 || j < n; j++ {
				select {
				case <-s.stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"message %d to %s"}}`, to, j, to)
				id, err := sendUntilAccepted(ctx, c, to, body, fmt.Sprintf("%s-%d", to, j))
				if err != nil {
					s.errs <- fmt.Errorf("recipient %s message %d: %w", to, j, err)
					return
				}
				s.accepted[i] = append(s.accepted[i], id)
				s.total.Add(1)
				time.Sleep(pause)
			}
		}()
	}
	return s
}

// wait waits for the senders to finish (stopping them first when stop is
// set) and fails the test on any send that was never accepted.
func (s *senders) wait(t *testing.T, stop bool) {
	t.Helper()
	if stop {
		close(s.stop)
	}
	s.wg.Wait()
	close(s.errs)
	for err := range s.errs {
		t.Fatal(err)
	}
}

// Many clients send to many recipients on 4 shards while a primary coreapp
// and another primary's transport plugin are SIGKILLed. At the network,
// every acknowledged message must have arrived exactly once, and the
// messages of each recipient in the order they were accepted.
func TestMessagesExactlyOnceInOrderAcrossKills(t *testing.T) {
	c := New(t, Options{Shards: 4, Coreapps: 6})
	const perRecipient = 30
	tos := recipients(c, 48)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	snd := startSenders(ctx, c, tos, perRecipient, 0)

	// Mid-stream: kill the primary coreapp of shard 0, and the transport
	// plugin of shard 1's primary.
	want := int64(len(tos) * perRecipient)
	c.Eventually(60*time.Second, "a third of the messages accepted", func() error {
		if n := snd.total.Load(); n < want/3 {
			return fmt.Errorf("%d accepted", n)
		}
		return nil
	})
	p0, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}
	p1, err := c.ShardPrimary(1)
	if err != nil {
		t.Fatal(err)
	}
	plugin := c.CoreappByAddr(p1).Children()
	if len(plugin) != 1 {
		t.Fatalf("shard 1's primary %s has children %v, want its one plugin", p1, plugin)
	}
	c.CoreappByAddr(p0).Kill()
	if err := syscall.Kill(plugin[0], syscall.SIGKILL); err != nil {
		t.Fatalf("kill plugin %d: %v", plugin[0], err)
	}
	t.Logf("killed coreapp %s (shard 0) and plugin %d of %s (shard 1) after %d accepted", p0, plugin[0], p1, snd.total.Load())

	snd.wait(t, false)
	c.RequireInOrderOnce(tos, snd.accepted)
	all := c.NetworkMessages("")
	// The kills must have happened mid-stream: shard 0's messages came
	// over two epochs, shard 1's over two connections.
	epochs0, conns1 := map[uint64]bool{}, map[string]bool{}
	for _, m := range all {
		if m.Shard == 0 {
			epochs0[m.Epoch] = true
		}
		if m.Shard == 1 {
			conns1[fmt.Sprint(m.ConnID)] = true
		}
	}
	if len(epochs0) < 2 || len(conns1) < 2 {
		t.Errorf("shard 0 sent over epochs %v, shard 1 over connections %v: a kill did not land mid-stream", epochs0, conns1)
	}
	c.RequireNoViolations()
}
