package clustertest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/stats"
)

// metric reads one sample from a node's /metrics: the sum over the series
// whose labels include want (a histogram gives its sample count). The
// metric must be exported.
func (c *Cluster) metric(addr, name string, want map[string]string) float64 {
	c.T.Helper()
	v, ok := c.metricIfAny(addr, name, want)
	if !ok {
		c.T.Fatalf("%s exports no %s", addr, name)
	}
	return v
}

// metricIfAny is metric for a labelled family that has no series until
// its first event (a CounterVec): absent reads as 0, false.
func (c *Cluster) metricIfAny(addr, name string, want map[string]string) (float64, bool) {
	c.T.Helper()
	code, body, err := c.Internal("GET", addr, "/metrics", "")
	if err != nil || code != 200 {
		c.T.Fatalf("GET %s/metrics: %d %v", addr, code, err)
	}
	fams, err := stats.Parse(body)
	if err != nil {
		c.T.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		total := 0.0
	series:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			case m.Histogram != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
		return total, true
	}
	return 0, false
}

// Every metric the operator is promised is there and moves when its event
// happens: lease and roles, heartbeats and their round trips, outbox and
// callback queue depth, webhook failures, plugin restarts, failovers and
// their duration, shard map changes, re-sharding and database errors.
func TestMetricsMoveWithTheirEvents(t *testing.T) {
	// unhealthy_interval 3 s: freezing the plugin for a moment must not cost the claim.
	c := New(t, Options{Coreapps: 3, Keepalive: 2 * time.Second, Unhealthy: 3})
	master, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	if v := c.metric(master, "multiconnect_master_is_primary", nil); v != 1 {
		t.Errorf("primary master: is_primary %v", v)
	}
	if v := c.metric(master, "multiconnect_master_lease_epoch", nil); v < 1 {
		t.Errorf("lease epoch %v", v)
	}
	for _, m := range c.Masters {
		if m.Addr != master && c.metric(m.Addr, "multiconnect_master_is_primary", nil) != 0 {
			t.Errorf("secondary master %s says it is primary", m.Addr)
		}
	}
	hb := c.metric(master, "multiconnect_master_heartbeats_total", map[string]string{"result": "ok"})
	rtt := c.metric(master, "multiconnect_master_heartbeat_rtt_seconds", nil)
	time.Sleep(time.Second)
	if c.metric(master, "multiconnect_master_heartbeats_total", map[string]string{"result": "ok"}) <= hb ||
		c.metric(master, "multiconnect_master_heartbeat_rtt_seconds", nil) <= rtt {
		t.Error("heartbeats and their round trips do not move")
	}

	primary, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}
	if c.metric(primary, "multiconnect_coreapp_is_primary", nil) != 1 || c.metric(primary, "multiconnect_coreapp_shard", nil) != 0 {
		t.Error("the primary coreapp's role gauges are wrong")
	}

	// A webhook that fails: callbacks queue up and failures count.
	var failing atomic.Bool
	failing.Store(true)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer hook.Close()
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q},"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":200}`, hook.URL))

	// Freeze the plugin: accepted messages wait in the outbox.
	plugin := c.CoreappByAddr(primary).Children()
	if len(plugin) != 1 {
		t.Fatalf("primary has children %v", plugin)
	}
	syscall.Kill(plugin[0], syscall.SIGSTOP)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	accepted := c.metric(primary, "multiconnect_messages_accepted_total", nil)
	for i := 0; i < 5; i++ {
		if code, _, body, err := c.PostMessage(ctx, "15550004", fmt.Sprintf(`{"to":"15550004","text":{"body":"metrics %d"}}`, i), ""); err != nil || code != 201 {
			t.Fatalf("send: %d %s %v", code, body, err)
		}
	}
	if got := c.metric(primary, "multiconnect_messages_accepted_total", nil) - accepted; got != 5 {
		t.Errorf("messages_accepted_total moved by %v, want 5", got)
	}
	c.Eventually(5*time.Second, "the outbox depth shows the backlog", func() error {
		if v := c.metric(primary, "multiconnect_coreapp_outbox_depth", nil); v != 5 {
			return fmt.Errorf("outbox depth %v", v)
		}
		return nil
	})
	syscall.Kill(plugin[0], syscall.SIGCONT)
	c.Eventually(5*time.Second, "the outbox drains", func() error {
		if v := c.metric(primary, "multiconnect_coreapp_outbox_depth", nil); v != 0 {
			return fmt.Errorf("outbox depth %v", v)
		}
		if v := c.metric(primary, "multiconnect_messages_delivered_total", nil); v < 5 {
			return fmt.Errorf("delivered %v", v)
		}
		return nil
	})
	c.Eventually(10*time.Second, "callbacks queue up behind the failing webhook", func() error {
		if v := c.metric(primary, "multiconnect_coreapp_callback_queue_depth", nil); v < 1 {
			return fmt.Errorf("callback queue depth %v", v)
		}
		if v := c.metric(primary, "multiconnect_webhook_failures_total", nil); v < 1 {
			return fmt.Errorf("webhook failures %v", v)
		}
		return nil
	})
	failing.Store(false)
	c.Eventually(10*time.Second, "the callback queue drains once the webhook answers", func() error {
		if v := c.metric(primary, "multiconnect_coreapp_callback_queue_depth", nil); v != 0 {
			return fmt.Errorf("callback queue depth %v", v)
		}
		if v := c.metric(primary, "multiconnect_callbacks_delivered_total", nil); v < 1 {
			return fmt.Errorf("callbacks delivered %v", v)
		}
		return nil
	})

	// A crashed plugin is restarted, and counted.
	restarts := c.metric(primary, "multiconnect_coreapp_plugin_restarts_total", nil)
	syscall.Kill(c.CoreappByAddr(primary).Children()[0], syscall.SIGKILL)
	c.Eventually(5*time.Second, "the plugin restart is counted", func() error {
		if v := c.metric(primary, "multiconnect_coreapp_plugin_restarts_total", nil); v != restarts+1 {
			return fmt.Errorf("plugin restarts %v", v)
		}
		return nil
	})

	// A failover: promotions, their duration and shard map changes move.
	promotions := c.metric(master, "multiconnect_master_promotions_total", nil)
	durations := c.metric(master, "multiconnect_master_failover_seconds", nil)
	changes := c.metric(master, "multiconnect_master_shard_map_changes_total", nil)
	c.CoreappByAddr(primary).Kill()
	c.WaitConnected(0, primary, 10*time.Second)
	if c.metric(master, "multiconnect_master_promotions_total", map[string]string{"reason": "heartbeats unanswered"})+
		c.metric(master, "multiconnect_master_promotions_total", map[string]string{"reason": "claim lapsed"}) < 1 ||
		c.metric(master, "multiconnect_master_promotions_total", nil) != promotions+1 {
		t.Error("the failover was not counted under its reason")
	}
	if c.metric(master, "multiconnect_master_failover_seconds", nil) != durations+1 {
		t.Error("the failover's duration was not observed")
	}
	if c.metric(master, "multiconnect_master_shard_map_changes_total", nil) != changes+1 {
		t.Error("the shard map change was not counted")
	}

	// Re-sharding is counted as a change too.
	code, body, _ := c.Internal("POST", master, "/v1/account/shards", `{"shards":2}`)
	if code != 201 {
		t.Fatalf("reshard: %d %s", code, body)
	}
	if c.metric(master, "multiconnect_master_reshards_total", nil) != 1 || c.metric(master, "multiconnect_master_shard_map_changes_total", nil) != changes+2 {
		t.Error("re-sharding was not counted")
	}

	// The database goes away: nodes count their failed operations.
	var dbErrs float64
	for _, p := range append(append([]*Proc{}, c.Masters...), c.Coreapps...) {
		if !p.Exited() {
			v, _ := c.metricIfAny(p.Addr, "multiconnect_db_errors_total", nil)
			dbErrs += v
		}
	}
	c.DB.Kill()
	time.Sleep(2 * time.Second)
	var after float64
	for _, p := range append(append([]*Proc{}, c.Masters...), c.Coreapps...) {
		if !p.Exited() {
			v, _ := c.metricIfAny(p.Addr, "multiconnect_db_errors_total", nil)
			after += v
		}
	}
	if after <= dbErrs {
		t.Errorf("db_errors_total did not move with the database down (%v -> %v)", dbErrs, after)
	}
	if err := c.DB.Start(); err != nil {
		t.Fatal(err)
	}
}
