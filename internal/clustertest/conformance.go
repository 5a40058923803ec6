package clustertest

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
)

// The conformance walker's view of state: what a refused request must not
// change. Fingerprint covers every table of the cluster's database except
// those that move by themselves, and the simulated network's recorded
// state, so a table or network record added later is covered without
// listing it here.

// unfingerprinted tables move without any API request: liveness, heartbeat
// observations, the master lease, failover audit rows, the schema row.
var unfingerprinted = []string{"nodes", "observations", "master_lease", "failovers", "schema_version"}

// fingerprintColumns names, for tables with columns that move by
// themselves, the columns that hold user-visible state. Every other table
// is compared whole with CHECKSUM TABLE.
var fingerprintColumns = map[string][]string{
	// map_version moves with every failover; the secret and shard count do not.
	"cluster": {"shards", "secret", "settings_version"},
	// The layout (which shards exist), not who holds them or their claims.
	"shard_map": {"shard_id"},
	// Claims move with every renewal (lease_expires, renewed_at).
	"shard_claims": {"shard_id"},
	"tokens":       {"token_hash", "username", "revoked", "expires_at"},
	// state, sent_at and error move as the outbox sends.
	"messages": {"id", "recipient", "type", "body", "idem_key"},
	// delivery columns move as the webhook is called.
	"callbacks": {"shard_id", "net_seq", "recipient", "kind", "payload"},
	// checked_at moves when a cached result is refreshed.
	"contacts": {"input_digits", "status", "wa_id"},
}

// SimnetStatePaths are the simulated network's API paths whose answers
// are its recorded state (what it received and was asked to do). An area
// that makes the network record something new adds its path here.
var SimnetStatePaths = []string{"/v1/messages", "/v1/registrations", "/v1/account/settings", "/v1/reads", "/v1/identities"}

// Fingerprint is a digest of the cluster's user-visible state: the
// database's tables (see above) and the simulated network's records. Two
// equal fingerprints mean no request changed anything in between.
func (c *Cluster) Fingerprint() (string, error) {
	var out strings.Builder
	rows, err := c.SQL.Query(`SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name`)
	if err != nil {
		return "", fmt.Errorf("listing tables: %w", err)
	}
	var tables []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return "", err
		}
		tables = append(tables, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	for _, t := range tables {
		if slices.Contains(unfingerprinted, t) {
			continue
		}
		var sum string
		if cols, ok := fingerprintColumns[t]; ok {
			q := fmt.Sprintf("SELECT CONCAT(COUNT(*), ':', COALESCE(SUM(CRC32(CONCAT_WS(0x1f, %s))), 0)) FROM `%s`",
				strings.Join(cols, ", "), t)
			if err := c.SQL.QueryRow(q).Scan(&sum); err != nil {
				return "", fmt.Errorf("fingerprint of %s: %w", t, err)
			}
		} else {
			var name string
			var ck sql.NullInt64
			if err := c.SQL.QueryRow("CHECKSUM TABLE `"+t+"`").Scan(&name, &ck); err != nil {
				return "", fmt.Errorf("checksum of %s: %w", t, err)
			}
			sum = fmt.Sprint(ck.Int64)
		}
		fmt.Fprintf(&out, "%s=%s\n", t, sum)
	}
	for _, p := range SimnetStatePaths {
		resp, err := c.http.Get("http://" + c.SimnetHTTP + p)
		if err != nil {
			return "", fmt.Errorf("simnet %s: %w", p, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("simnet %s: HTTP %d: %s", p, resp.StatusCode, b)
		}
		h := sha256.Sum256(b)
		fmt.Fprintf(&out, "simnet%s=%s\n", p, hex.EncodeToString(h[:8]))
	}
	return out.String(), nil
}
