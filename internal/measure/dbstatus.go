package measure

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// DBStatus is a snapshot of MariaDB's global status counters (SHOW GLOBAL
// STATUS, numeric values only). Subtract two with Since to see what the
// clients made the database do in between.
type DBStatus map[string]int64

// ReadDBStatus reads the counters through db. The read itself is one
// statement (Questions counts it); Since subtracts it.
func ReadDBStatus(ctx context.Context, db *sql.DB) (DBStatus, error) {
	rows, err := db.QueryContext(ctx, `SHOW GLOBAL STATUS`)
	if err != nil {
		return nil, fmt.Errorf("show global status: %w", err)
	}
	defer rows.Close()
	st := DBStatus{}
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, fmt.Errorf("show global status: %w", err)
		}
		if n, err := strconv.ParseInt(value, 10, 64); err == nil {
			st[name] = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("show global status: %w", err)
	}
	return st, nil
}

// Since is s minus an earlier snapshot, less the one statement that read
// the earlier snapshot.
func (s DBStatus) Since(earlier DBStatus) DBStatus {
	d := DBStatus{}
	for k, v := range s {
		d[k] = v - earlier[k]
	}
	d["Questions"]--
	d["Com_show_status"]--
	return d
}

// Statements is how many statements clients sent (Questions: every
// statement and COMMIT/BEGIN, not the server's own).
func (s DBStatus) Statements() int64 { return s["Questions"] }

// Fsyncs is how many fsync() calls InnoDB made (data and redo log).
func (s DBStatus) Fsyncs() int64 { return s["Innodb_data_fsyncs"] }

// TopCommands lists the Com_* counters that moved, largest first, as
// "select=1234 insert=56 ...": where the statements went.
func (s DBStatus) TopCommands(n int) string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range s {
		if strings.HasPrefix(k, "Com_") && v > 0 && !strings.HasPrefix(k, "Com_stmt_") {
			all = append(all, kv{strings.TrimPrefix(k, "Com_"), v})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var b strings.Builder
	for i, e := range all {
		if i == n {
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", e.k, e.v)
	}
	return b.String()
}
