package database

import "time"

// The connection budget. MySQL and MariaDB refuse connections beyond
// max_connections (151 by default), so every pool a node opens has a fixed
// maximum and a layout's total is a sum of these constants (README,
// "Connection budget"; TestComposeLayoutFitsDefaultMaxConnections).
const (
	// DefaultMaxConnections is max_connections as MySQL 8 and MariaDB ship it.
	DefaultMaxConnections = 151

	// MasterPool serves a master's monitor, API, fenced writes and GC.
	MasterPool = 8
	// MasterLeasePool is reserved for the master lease (acquire, renew,
	// release): a renewal never waits for a connection behind other work.
	MasterLeasePool = 2

	// CoreappPool serves a coreapp's requests, group commits, outbox,
	// callbacks and liveness. Request work that touches the database is
	// bounded below it (coreapp's request slots), so background work
	// always finds connections too.
	CoreappPool = 20
	// CoreappClaimPool is reserved for the shard claim (discover, take,
	// renew, hand back).
	CoreappClaimPool = 2

	// GatewayPool serves the gateway's logins, tokens, users and shard map.
	GatewayPool = 16

	// CloudAPIPluginPool serves the Cloud API transport plugin of a node
	// that runs it (MC_TRANSPORT=transport-cloudapi): its send records,
	// media ids and the polling of its shard's inbound webhook rows.
	// Not in Budget: a layout on the simulated network opens none.
	CloudAPIPluginPool = 4

	// DefaultPool is the size of a pool opened without MaxOpen.
	DefaultPool = 16
)

// LockWait is the default session innodb_lock_wait_timeout (MySQL's
// default is 50 s). One second is the server's smallest non-zero value.
const LockWait = time.Second

// Per-node totals.
const (
	MasterConns  = MasterPool + MasterLeasePool
	CoreappConns = CoreappPool + CoreappClaimPool
	GatewayConns = GatewayPool
)

// Budget is the most connections a layout opens at once.
func Budget(masters, coreapps, gateways int) int {
	return masters*MasterConns + coreapps*CoreappConns + gateways*GatewayConns
}
