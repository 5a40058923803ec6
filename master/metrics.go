package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg          *prometheus.Registry
	primary      prometheus.Gauge
	epoch        prometheus.Gauge
	failovers    *prometheus.CounterVec
	noCandidate  prometheus.Counter
	heartbeats   *prometheus.CounterVec
	heartbeatRTT prometheus.Histogram
	dbErrors     *prometheus.CounterVec
	gcDeleted    *prometheus.CounterVec
	reshards     prometheus.Counter
	mapChanges   prometheus.Counter
	// failoverSeconds: from the replaced holder's last claim renewal to
	// the promotion of its successor, the detection part of a failover.
	failoverSeconds prometheus.Histogram
	// holdersOff: holders whose last answer says they are off the network.
	holdersOff prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		primary: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_master_is_primary",
			Help: "1 while this master holds the master lease."}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_master_lease_epoch",
			Help: "Epoch of the master lease this master last held."}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "multiconnect_master_promotions_total",
			Help: "Coreapps promoted to primary of a shard, by reason."}, []string{"reason"}),
		noCandidate: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_master_promotion_blocked_total",
			Help: "Evaluations that found a shard to promote but no healthy warm secondary."}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "multiconnect_master_heartbeats_total",
			Help: "Heartbeats sent to coreapps, by result."}, []string{"result"}),
		heartbeatRTT: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_master_heartbeat_rtt_seconds",
			Help: "Round trip of answered heartbeats.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		dbErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "multiconnect_db_errors_total",
			Help: "Failed database operations, by operation."}, []string{"op"}),
		gcDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "multiconnect_master_gc_deleted_total",
			Help: "Rows the garbage collector deleted, by table (messages, callbacks, media)."}, []string{"table"}),
		reshards: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_master_reshards_total",
			Help: "Changes of the shard count this master made (POST /v1/account/shards)."}),
		mapChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_master_shard_map_changes_total",
			Help: "Changes this master made to the shard map: promotions and shard count changes."}),
		failoverSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_master_failover_seconds",
			Help:    "From a replaced primary coreapp's last claim renewal to its successor's promotion.",
			Buckets: []float64{0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 45, 60, 120, 180}}),
		holdersOff: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_master_holders_off_network",
			Help: "Primary coreapps whose last heartbeat answer says they should be connected to the network and are not. Most of them at once is a network outage: see the README's failure model."}),
	}
	m.reg.MustRegister(m.primary, m.epoch, m.failovers, m.noCandidate, m.heartbeats, m.heartbeatRTT, m.dbErrors, m.gcDeleted, m.reshards, m.mapChanges, m.failoverSeconds, m.holdersOff,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) heartbeat(ok bool, rtt time.Duration) {
	if ok {
		m.heartbeats.WithLabelValues("ok").Inc()
		m.heartbeatRTT.Observe(rtt.Seconds())
	} else {
		m.heartbeats.WithLabelValues("failed").Inc()
	}
}

func (m *metrics) failover(reason string) { m.failovers.WithLabelValues(reason).Inc() }
