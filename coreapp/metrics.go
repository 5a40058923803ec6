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

	accepted           prometheus.Counter
	delivered          prometheus.Counter
	acceptBatch        prometheus.Histogram
	acceptCommit       prometheus.Histogram
	callbacksStored    prometheus.Counter
	eventRedeliveries  prometheus.Counter
	callbacksDelivered prometheus.Counter
	webhookFailures    prometheus.Counter
	outboxDepth        prometheus.Gauge
	callbackDepth      prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		outboxDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_coreapp_outbox_depth",
			Help: "Accepted messages of this coreapp's shard not yet at the network (0 when secondary)."}),
		callbackDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "multiconnect_coreapp_callback_queue_depth",
			Help: "Stored callbacks of this coreapp's shard not yet taken by the webhook (0 when secondary)."}),
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
	m.accepted = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_messages_accepted_total",
		Help: "Messages committed and answered 201."})
	m.delivered = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_messages_delivered_total",
		Help: "Messages the network confirmed (accepted or already had)."})
	m.acceptBatch = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_accept_batch_rows",
		Help: "Messages per group commit.", Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200}})
	m.acceptCommit = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "multiconnect_accept_commit_seconds",
		Help: "Duration of one group commit.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12)})
	m.callbacksStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_callbacks_stored_total",
		Help: "Callbacks persisted for the webhook."})
	m.eventRedeliveries = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_coreapp_event_redeliveries_total",
		Help: "Reconnections asked for because the callback writer's ack cursor stopped on a connection that stayed up."})
	m.callbacksDelivered = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_callbacks_delivered_total",
		Help: "Callbacks the webhook answered with 200."})
	m.webhookFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "multiconnect_webhook_failures_total",
		Help: "Webhook requests not answered with 200."})
	m.shard.Set(-1)
	m.reg.MustRegister(m.accepted, m.delivered, m.acceptBatch, m.acceptCommit, m.callbacksStored, m.eventRedeliveries, m.callbacksDelivered, m.webhookFailures,
		m.outboxDepth, m.callbackDepth)
	m.reg.MustRegister(m.primary, m.shard, m.connects, m.stepDowns, m.heartbeats, m.pluginRestarts, m.dbErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
