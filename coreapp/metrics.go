package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg            *prometheus.Registry
	primary        prometheus.Gauge
	shard          prometheus.Gauge
	connects       prometheus.Counter
	stepDowns      prometheus.Counter
	heartbeats     prometheus.Counter
	pluginRestarts prometheus.Counter
	dbErrors       *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		primary: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_coreapp_is_primary",
			Help: "1 while this coreapp holds a valid shard claim."}),
		shard: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_coreapp_shard",
			Help: "The shard this coreapp serves, -1 when secondary."}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_coreapp_network_connects_total",
			Help: "Connections to the messaging network made through the transport plugin."}),
		stepDowns: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_coreapp_step_downs_total",
			Help: "Times this coreapp gave up a shard."}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_coreapp_heartbeats_answered_total",
			Help: "Heartbeats answered."}),
		pluginRestarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_coreapp_plugin_restarts_total",
			Help: "Transport plugin processes restarted after exiting."}),
		dbErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "multiconnect_db_errors_total",
			Help: "Failed database operations, by operation."}, []string{"op"}),
	}
	m.shard.Set(-1)
	m.reg.MustRegister(m.primary, m.shard, m.connects, m.stepDowns, m.heartbeats, m.pluginRestarts, m.dbErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
