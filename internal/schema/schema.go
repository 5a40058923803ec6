// Package schema holds the cluster's versioned MySQL schema.
//
// The primary master applies migrations (as in the original, the primary
// master upgrades the schema); every other node only checks the version: a
// node that finds a schema newer than it knows refuses to start, and one that
// finds an older schema waits for the primary master to upgrade it.
//
// The bootstrap (the version row and the master lease) is created by any
// master with CREATE ... IF NOT EXISTS, since a lease is needed to elect the
// primary that applies the rest.
package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Migration is one schema step. Statements must be idempotent (IF NOT EXISTS,
// INSERT IGNORE): MySQL commits DDL implicitly, so a master that dies half-way
// leaves a step for its successor to run again. An ALTER TABLE adding an
// index or a column counts as idempotent too: run again, it fails with
// "duplicate key name" (1061) or "duplicate column" (1060), which Upgrade
// takes as done (MySQL has no ADD INDEX/COLUMN IF NOT EXISTS); so does a
// DROP INDEX run again, failing with "can't drop" (1091).
type Migration struct {
	Version    int
	Name       string
	Statements []string
}

var bootstrap = []string{
	`CREATE TABLE IF NOT EXISTS schema_version (
		id TINYINT PRIMARY KEY,
		version INT NOT NULL,
		updated_at DATETIME(6) NOT NULL
	) ENGINE=InnoDB`,
	`INSERT IGNORE INTO schema_version VALUES (1, 0, NOW(6))`,
	// One row. holder is a master process's instance id; epoch grows with
	// every change of holder and fences every write the primary makes.
	`CREATE TABLE IF NOT EXISTS master_lease (
		id TINYINT PRIMARY KEY,
		holder VARCHAR(255) NOT NULL,
		holder_addr VARCHAR(255) NOT NULL,
		epoch BIGINT NOT NULL,
		expires_at DATETIME(6) NOT NULL,
		acquired_at DATETIME(6) NOT NULL
	) ENGINE=InnoDB`,
	`INSERT IGNORE INTO master_lease VALUES (1, '', '', 0, '2000-01-01', '2000-01-01')`,
}

// Migrations are applied in order; Latest is the last version.
var Migrations = []Migration{
	{1, "cluster core", []string{
		// Every master and coreapp process that ever registered, keyed by the
		// address other nodes reach it at. incarnation changes each start, so
		// a restarted process can never renew its predecessor's shard claim.
		`CREATE TABLE IF NOT EXISTS nodes (
			id VARCHAR(255) PRIMARY KEY,
			role VARCHAR(16) NOT NULL,
			hostname VARCHAR(255) NOT NULL,
			container VARCHAR(255) NOT NULL,
			incarnation BIGINT NOT NULL,
			keepalive_ms INT NOT NULL DEFAULT 0,
			version VARCHAR(64) NOT NULL DEFAULT '',
			started_at DATETIME(6) NOT NULL,
			last_seen DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
		// One row per shard. The holder (node_id, incarnation) may serve the
		// shard at epoch while lease_expires (DB clock) is ahead of NOW(6)
		// (since version 12 the claim's expiry lives in shard_claims), and
		// may connect to the network only once NOW(6) >= connect_after, which the
		// master sets past the previous holder's last possible connection.
		// Renewals use GREATEST so a shortened unhealthy_interval never pulls an
		// expiry back under a holder that already counts on it; they also set
		// renewed_at, which always changes, so "0 rows affected" means lost.
		`CREATE TABLE IF NOT EXISTS shard_map (
			shard_id INT PRIMARY KEY,
			node_id VARCHAR(255) NULL,
			incarnation BIGINT NOT NULL DEFAULT 0,
			epoch BIGINT NOT NULL DEFAULT 0,
			lease_expires DATETIME(6) NOT NULL,
			connect_after DATETIME(6) NOT NULL,
			assigned_at DATETIME(6) NULL,
			renewed_at DATETIME(6) NULL,
			master_epoch BIGINT NOT NULL DEFAULT 0
		) ENGINE=InnoDB`,
		// Cluster-wide state: the shard count, the secret that admits cluster
		// members to internal ports (anyone with the DB credentials is a
		// member), and version counters nodes poll to notice changes fast.
		`CREATE TABLE IF NOT EXISTS cluster (
			id TINYINT PRIMARY KEY,
			shards INT NOT NULL,
			secret VARCHAR(128) NOT NULL,
			settings_version BIGINT NOT NULL,
			map_version BIGINT NOT NULL
		) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS settings (
			name VARCHAR(128) PRIMARY KEY,
			value TEXT NOT NULL,
			updated_at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
		// Heartbeat results each master shares, so the primary master can ask
		// whether a secondary master also lost a coreapp.
		`CREATE TABLE IF NOT EXISTS observations (
			master_id VARCHAR(255) NOT NULL,
			node_id VARCHAR(255) NOT NULL,
			last_ok DATETIME(6) NULL,
			updated_at DATETIME(6) NOT NULL,
			PRIMARY KEY (master_id, node_id)
		) ENGINE=InnoDB`,
		// An audit trail of promotions, for operators and metrics.
		`CREATE TABLE IF NOT EXISTS failovers (
			id BIGINT AUTO_INCREMENT PRIMARY KEY,
			shard_id INT NOT NULL,
			old_node VARCHAR(255) NULL,
			new_node VARCHAR(255) NOT NULL,
			epoch BIGINT NOT NULL,
			reason VARCHAR(255) NOT NULL,
			master_epoch BIGINT NOT NULL,
			at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
	}},
	{2, "users and tokens", []string{
		`CREATE TABLE IF NOT EXISTS users (
			username VARCHAR(64) PRIMARY KEY,
			password_hash VARCHAR(255) NOT NULL,
			role VARCHAR(16) NOT NULL,
			must_change_password TINYINT NOT NULL DEFAULT 0,
			created_at DATETIME(6) NOT NULL,
			updated_at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
		// Only a hash of each bearer token is stored.
		`CREATE TABLE IF NOT EXISTS tokens (
			token_hash CHAR(64) PRIMARY KEY,
			username VARCHAR(64) NOT NULL,
			expires_at DATETIME(6) NOT NULL,
			revoked TINYINT NOT NULL DEFAULT 0,
			created_at DATETIME(6) NOT NULL,
			KEY tokens_user (username)
		) ENGINE=InnoDB`,
	}},
	{3, "messages, callbacks, media and contacts", []string{
		// The outbox. seq is the acceptance order: a shard's sender delivers
		// its unsent rows (state 0) in seq order, so messages to one
		// recipient reach the network in the order they were accepted,
		// whichever coreapp sends them. id is what the network dedupes by.
		// idem_key makes a client's retry return the first id; keys are per
		// recipient, not per shard, so re-sharding moves rows freely.
		`CREATE TABLE IF NOT EXISTS messages (
			seq BIGINT AUTO_INCREMENT PRIMARY KEY,
			id VARCHAR(64) NOT NULL,
			shard_id INT NOT NULL,
			recipient VARCHAR(64) NOT NULL,
			type VARCHAR(16) NOT NULL,
			body MEDIUMBLOB NOT NULL,
			idem_key VARCHAR(128) NULL,
			state TINYINT NOT NULL DEFAULT 0,
			error VARCHAR(255) NULL,
			accepted_at DATETIME(6) NOT NULL,
			sent_at DATETIME(6) NULL,
			UNIQUE KEY messages_id (id),
			UNIQUE KEY messages_idem (recipient, idem_key),
			KEY messages_outbox (shard_id, state, seq)
		) ENGINE=InnoDB`,
		// Callbacks for the webhook, in seq order per shard. (shard_id,
		// net_seq) is the network's event number: an event pushed again
		// after a failover is stored once (version 7 adds net_stream). Events the coreapp makes itself
		// (a send the network rejected) have net_seq NULL.
		`CREATE TABLE IF NOT EXISTS callbacks (
			seq BIGINT AUTO_INCREMENT PRIMARY KEY,
			shard_id INT NOT NULL,
			net_seq BIGINT NULL,
			recipient VARCHAR(64) NOT NULL,
			kind VARCHAR(16) NOT NULL,
			payload MEDIUMBLOB NOT NULL,
			delivered TINYINT NOT NULL DEFAULT 0,
			attempts INT NOT NULL DEFAULT 0,
			created_at DATETIME(6) NOT NULL,
			delivered_at DATETIME(6) NULL,
			UNIQUE KEY callbacks_event (shard_id, net_seq),
			KEY callbacks_pending (shard_id, delivered, seq)
		) ENGINE=InnoDB`,
		// Uploaded media; the bytes live in the shared media directory.
		`CREATE TABLE IF NOT EXISTS media (
			id VARCHAR(64) PRIMARY KEY,
			mime_type VARCHAR(255) NOT NULL,
			size BIGINT NOT NULL,
			sha256 CHAR(64) NOT NULL,
			created_at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
		// Contact check results, cached for 7 days as in the original.
		`CREATE TABLE IF NOT EXISTS contacts (
			input_digits VARCHAR(64) PRIMARY KEY,
			status VARCHAR(16) NOT NULL,
			wa_id VARCHAR(64) NULL,
			checked_at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
	}},
	{4, "registration", []string{
		// The business account(s) the primary master registered or is
		// registering (POST /v1/account and /v1/account/verify). state is
		// pending (a code was requested; the newest pending row is the one
		// a code verifies), registered (verified; wa_id is cc followed by
		// phone_number) or superseded (a newer request or registration
		// replaced it). At most one row is registered at a time.
		`CREATE TABLE IF NOT EXISTS account (
			cc VARCHAR(3) NOT NULL,
			phone_number VARCHAR(15) NOT NULL,
			method VARCHAR(8) NOT NULL,
			vname VARCHAR(512) CHARACTER SET utf8mb4 NOT NULL,
			state VARCHAR(16) NOT NULL,
			wa_id VARCHAR(18) NULL,
			requested_at DATETIME(6) NOT NULL,
			registered_at DATETIME(6) NULL,
			master_epoch BIGINT NOT NULL DEFAULT 0,
			PRIMARY KEY (cc, phone_number),
			KEY account_state (state, requested_at)
		) ENGINE=InnoDB`,
	}},
	{5, "indexes for re-sharding and the garbage collector", []string{
		// Re-sharding reads only unsent messages and undelivered callbacks,
		// inside the master's fenced transaction: without these it scanned
		// every stored row while accepts waited on the cluster row.
		`ALTER TABLE messages ADD INDEX messages_unsent (state)`,
		`ALTER TABLE callbacks ADD INDEX callbacks_undelivered (delivered)`,
		// The collector's range scans: each batch reads the rows it deletes,
		// not the table, and a run ends without a full scan.
		`ALTER TABLE messages ADD INDEX messages_finished (sent_at)`,
		`ALTER TABLE callbacks ADD INDEX callbacks_finished (delivered_at)`,
		`ALTER TABLE media ADD INDEX media_created (created_at)`,
		`ALTER TABLE tokens ADD INDEX tokens_dead (revoked, expires_at)`,
		`ALTER TABLE failovers ADD INDEX failovers_at (at)`,
	}},
	{6, "idempotency keys per user and recipient", []string{
		// idem_scope is SHA-256 over (user, the recipient's digits, key),
		// body_hash over the canonical request: the same key to the same
		// number from the same user is one message, whatever the spelling
		// of the number, and a different message under it is refused.
		// idem_key (per raw recipient) is no longer written.
		`ALTER TABLE messages ADD COLUMN idem_scope CHAR(64) NULL, ADD COLUMN body_hash CHAR(64) NULL,
			ADD UNIQUE KEY messages_idem_scope (idem_scope)`,
	}},
	{7, "callbacks keyed by the network's event stream", []string{
		// A network's event numbering can start again (it restarted and
		// lost its state); keyed by (shard_id, net_seq) alone, its new
		// events were ignored as copies of stored ones. Events are now
		// identified by (shard_id, net_stream, net_seq), net_stream being
		// the network's name for the numbering (transport Event.Stream).
		// Rows stored before have net_stream ''. One statement, so the
		// change is applied whole or not at all.
		`ALTER TABLE callbacks
			ADD COLUMN net_stream VARCHAR(64) NOT NULL DEFAULT '' AFTER shard_id,
			DROP INDEX callbacks_event,
			ADD UNIQUE KEY callbacks_event (shard_id, net_stream, net_seq)`,
	}},
	{8, "settings documents up to 16 MiB", []string{
		// The settings table holds every cluster-wide document by name
		// (application settings, account-level settings such as the profile
		// photo, media providers, certificates), which TEXT's 64 KiB
		// cannot hold.
		`ALTER TABLE settings MODIFY value MEDIUMTEXT NOT NULL`,
	}},
	{9, "inbound messages by id", []string{
		// Who sent each inbound message, so PUT /v1/messages/{id} (mark
		// as read) reaches the sender's shard: the gateway looks the id up
		// here. Written for every inbound event, webhook or not, as the
		// original kept incoming messages; collected with the messages.
		`CREATE TABLE IF NOT EXISTS inbound_messages (
			id VARCHAR(128) NOT NULL PRIMARY KEY,
			sender VARCHAR(64) NOT NULL,
			received_at DATETIME(6) NOT NULL,
			KEY inbound_received (received_at)
		) ENGINE=InnoDB`,
	}},
	{10, "the Cloud API transport's tables", []string{
		// What Meta's webhooks delivered to a gateway, stored before the
		// gateway answers 200 (Meta retries what is not acknowledged), one
		// row per contact's event. seq numbers a shard's rows from 1
		// without gaps (the transport Event contract); the gateway takes
		// it from cloudapi_inbound_seq under a row lock. dedupe_key (the
		// wamid, and the status for a status) makes Meta's retries and
		// duplicates one row. kind, message_id, status, recipient, ts and
		// payload are the transport Event the shard's primary coreapp's
		// plugin hands on; acked is set when the coreapp acknowledged it.
		`CREATE TABLE IF NOT EXISTS cloudapi_inbound (
			shard INT NOT NULL,
			seq BIGINT NOT NULL,
			dedupe_key VARCHAR(191) NOT NULL,
			kind VARCHAR(16) NOT NULL,
			message_id VARCHAR(191) NOT NULL,
			status VARCHAR(32) NOT NULL DEFAULT '',
			recipient VARCHAR(64) NOT NULL,
			ts BIGINT NOT NULL,
			payload MEDIUMTEXT NOT NULL,
			received_at DATETIME(6) NOT NULL,
			acked TINYINT NOT NULL DEFAULT 0,
			PRIMARY KEY (shard, seq),
			UNIQUE KEY cloudapi_inbound_dedupe (dedupe_key),
			KEY cloudapi_inbound_acked (acked, received_at)
		) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS cloudapi_inbound_seq (
			shard INT NOT NULL PRIMARY KEY,
			seq BIGINT NOT NULL
		) ENGINE=InnoDB`,
		// Each send attempt of the Cloud API transport: our message id, the
		// wamid Meta returned (both ways: statuses, mark-as-read and
		// replies map through it), and the attempt's outcome, so a request
		// whose outcome is unknown is never sent again blindly.
		`CREATE TABLE IF NOT EXISTS cloudapi_messages (
			id VARCHAR(191) NOT NULL PRIMARY KEY,
			wamid VARCHAR(191) NULL,
			recipient VARCHAR(64) NOT NULL,
			state VARCHAR(16) NOT NULL,
			attempts INT NOT NULL DEFAULT 0,
			node VARCHAR(255) NOT NULL DEFAULT '',
			first_at DATETIME(6) NOT NULL,
			last_at DATETIME(6) NOT NULL,
			error TEXT NULL,
			UNIQUE KEY cloudapi_messages_wamid (wamid),
			KEY cloudapi_messages_state (state, last_at)
		) ENGINE=InnoDB`,
		// The Cloud media id of each of our uploads that a message sent
		// (POST /{phone-number-id}/media), so the next sends name it
		// without uploading again; used for less than the 30 days Meta
		// keeps an upload (uploaded_at).
		`CREATE TABLE IF NOT EXISTS cloudapi_media (
			media_id VARCHAR(64) NOT NULL PRIMARY KEY,
			cloud_id VARCHAR(191) NOT NULL,
			uploaded_at DATETIME(6) NOT NULL
		) ENGINE=InnoDB`,
	}},
	{11, "drop the per-raw-recipient idempotency index", []string{
		// messages_idem (recipient, idem_key) served the keys of versions
		// before 6; idem_key is no longer written, yet every accepted
		// message still wrote an entry into the index. Dropping an index
		// is a metadata change in InnoDB: no table copy however many rows.
		// The column stays: dropping it would rebuild the table.
		`ALTER TABLE messages DROP INDEX messages_idem`,
	}},
	{12, "shard claims apart from the fenced shard_map row", []string{
		// A shard's claim: who holds it (a copy of shard_map's node_id,
		// incarnation and epoch, written in the same transaction by every
		// promotion and release) and until when on the database's clock.
		// The holder renews lease_expires here every
		// min(heartbeat_interval, unhealthy_interval/4). Every group commit
		// share-locks the shard's shard_map row until its COMMIT (its
		// fence); a renewal that updated that row waited for every group
		// commit in flight, and under full load claims lapsed behind them.
		// Renewals use GREATEST so a shortened unhealthy_interval never
		// pulls an expiry back under a holder that counts on it; they also
		// set renewed_at, which always changes, so "0 rows affected" means
		// lost. A hand-back sets lease_expires to NOW(6).
		`CREATE TABLE IF NOT EXISTS shard_claims (
			shard_id INT PRIMARY KEY,
			node_id VARCHAR(255) NULL,
			incarnation BIGINT NOT NULL DEFAULT 0,
			epoch BIGINT NOT NULL DEFAULT 0,
			lease_expires DATETIME(6) NOT NULL,
			renewed_at DATETIME(6) NULL
		) ENGINE=InnoDB`,
		// The claims as they stand. shard_map keeps its lease_expires and
		// renewed_at: coreapps of the previous version, still running
		// during a rolling upgrade, renew there, so masters take the later
		// of the two expiries (and promotions write both).
		`INSERT IGNORE INTO shard_claims (shard_id, node_id, incarnation, epoch, lease_expires, renewed_at)
			SELECT shard_id, node_id, incarnation, epoch, lease_expires, renewed_at FROM shard_map`,
	}},
}

// Latest is the schema version this binary knows.
func Latest() int { return Migrations[len(Migrations)-1].Version }

// ErrTooNew means the database was upgraded by a newer release.
var ErrTooNew = errors.New("database schema is newer than this binary")

// Version reads the applied version; 0 when the schema was never bootstrapped.
func Version(ctx context.Context, db *sql.DB) (int, error) {
	var v int
	err := db.QueryRowContext(ctx, `SELECT version FROM schema_version WHERE id = 1`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) || errorNumber(err) == 1146 { // 1146: no such table
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// Check fails with ErrTooNew when the database is ahead of this binary.
func Check(ctx context.Context, db *sql.DB) (int, error) {
	v, err := Version(ctx, db)
	if err != nil {
		return 0, err
	}
	if v > Latest() {
		return v, fmt.Errorf("%w: the database is at schema version %d, this binary knows up to %d; upgrade this node", ErrTooNew, v, Latest())
	}
	return v, nil
}

// WaitCurrent blocks until the primary master has brought the schema to
// Latest, polling every interval; it fails at once on a schema too new.
func WaitCurrent(ctx context.Context, db *sql.DB, interval time.Duration, waiting func(have int)) error {
	for {
		v, err := Check(ctx, db)
		if errors.Is(err, ErrTooNew) {
			return err
		}
		if err == nil && v == Latest() {
			return nil
		}
		if waiting != nil {
			waiting(v)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for schema version %d: %w", Latest(), ctx.Err())
		case <-time.After(interval):
		}
	}
}

// Bootstrap creates the version row and the master lease. Any master may run it.
func Bootstrap(ctx context.Context, db *sql.DB) error {
	for _, s := range bootstrap {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("bootstrap schema: %w", err)
		}
	}
	return nil
}

// Upgrade applies the pending migrations. stillPrimary is asked before each
// step (and each step re-reads the version under a named lock), so a master
// that lost its lease stops upgrading; the steps are idempotent, so the rare
// step run twice by an old and a new primary is harmless.
func Upgrade(ctx context.Context, db *sql.DB, stillPrimary func(context.Context) error, log func(msg string, args ...any)) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("schema upgrade: %w", err)
	}
	defer conn.Close()
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK('multiconnect_schema', 10)`).Scan(&got); err != nil || got.Int64 != 1 {
		return fmt.Errorf("schema upgrade: could not take the schema lock (%v)", err)
	}
	defer conn.ExecContext(context.Background(), `SELECT RELEASE_LOCK('multiconnect_schema')`)
	for _, m := range Migrations {
		var v int
		if err := conn.QueryRowContext(ctx, `SELECT version FROM schema_version WHERE id = 1`).Scan(&v); err != nil {
			return fmt.Errorf("schema upgrade: read version: %w", err)
		}
		if v > Latest() {
			return fmt.Errorf("%w: the database is at schema version %d, this binary knows up to %d", ErrTooNew, v, Latest())
		}
		if m.Version <= v {
			continue
		}
		if err := stillPrimary(ctx); err != nil {
			return fmt.Errorf("schema upgrade to %d: %w", m.Version, err)
		}
		for _, s := range m.Statements {
			if _, err := conn.ExecContext(ctx, s); err != nil {
				if n := errorNumber(err); n == errDupColumn || n == errDupKeyName || n == errCantDropKey {
					// Duplicate column or key name: an ALTER a predecessor
					// already applied (MySQL has no ADD COLUMN IF NOT EXISTS).
					continue
				}
				return fmt.Errorf("schema upgrade to %d (%s): %w", m.Version, m.Name, err)
			}
		}
		if _, err := conn.ExecContext(ctx, `UPDATE schema_version SET version = ?, updated_at = NOW(6) WHERE id = 1 AND version < ?`, m.Version, m.Version); err != nil {
			return fmt.Errorf("schema upgrade to %d: record version: %w", m.Version, err)
		}
		if log != nil {
			log("schema upgraded", "version", m.Version, "name", m.Name)
		}
	}
	return nil
}
