package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// gatewayMetrics are the module's own series. They live in the shared view
// so their counts survive config reloads, and are registered into each
// config's registry (Caddy makes a new one per config load) on Provision.
type gatewayMetrics struct {
	routed     *prometheus.CounterVec // by route and target
	shardReqs  *prometheus.CounterVec // by shard: shows skew between shards
	retries    *prometheus.CounterVec // by reason
	unroutable *prometheus.CounterVec // by reason
	authFail   *prometheus.CounterVec // by reason
	logins     *prometheus.CounterVec // by result
	tokenCache *prometheus.CounterVec // hit / miss / stale
	cloudAPI   *prometheus.CounterVec // Cloud API webhooks by result
	// cloudAPIUnwanted counts the statuses those webhooks carried that the
	// cluster's webhook settings do not want, acknowledged and not stored.
	cloudAPIUnwanted prometheus.Counter
	mapVersion       prometheus.Gauge
	mapChanges       prometheus.Counter
	mapAge           func() float64
}

func newGatewayMetrics() *gatewayMetrics {
	const ns, sub = "multiconnect", "gateway"
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	return &gatewayMetrics{
		routed:     counter("requests_total", "Requests by route and by who answered them (gateway, shard, coreapp, master, none).", "route", "target"),
		shardReqs:  counter("shard_requests_total", "Recipient-bound requests proxied, by shard.", "shard"),
		retries:    counter("retries_total", "Requests retried once after a reloaded shard map or master lease, by reason (not_primary, refused).", "reason"),
		unroutable: counter("unroutable_total", "Requests refused because no node could take them, by reason.", "reason"),
		authFail:   counter("auth_failures_total", "Requests refused by authentication or authorisation, by reason.", "reason"),
		logins:     counter("logins_total", "POST /v1/users/login attempts by result.", "result"),
		tokenCache: counter("token_cache_total", "Bearer token checks by cache result (hit, miss, stale: served from cache while MySQL was unreachable, unknown: refused from the negative cache).", "result"),
		cloudAPI:   counter("cloudapi_webhooks_total", "Cloud API webhooks (POST /cloudapi/webhook) by result: stored (committed, answered 200), unsigned, bad_signature, stale, invalid, not_ready, failed (database, answered 500).", "result"),
		cloudAPIUnwanted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cloudapi_statuses_left_out_total",
			Help: "Statuses in Cloud API webhooks that no webhook of the cluster wants (none set, or sent/delivered/read turned off), acknowledged to Meta and not stored."}),
		mapVersion: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "shard_map_version", Help: "Version of the cached shard map."}),
		mapChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "shard_map_changes_total", Help: "Shard map reloads that found a change."}),
	}
}

// register adds the collectors to reg; collectors already there (a second
// handler in the same config) are fine.
func (m *gatewayMetrics) register(reg *prometheus.Registry) error {
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "multiconnect", Subsystem: "gateway", Name: "shard_map_age_seconds",
		Help: "Seconds since the shard map was last read from MySQL (-1 before the first read); grows while MySQL is unreachable."},
		func() float64 { return m.mapAge() })
	for _, c := range []prometheus.Collector{m.routed, m.shardReqs, m.retries, m.unroutable, m.authFail, m.logins, m.tokenCache, m.cloudAPI, m.cloudAPIUnwanted, m.mapVersion, m.mapChanges, age} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
