package clustertest

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DBStatus is a snapshot of MariaDB's global status counters (SHOW GLOBAL
// STATUS, numeric values only). Subtract two with Since to see what the
// cluster made the database do in between.
type DBStatus map[string]int64

// DBStatus reads the counters. The read itself is one statement
// (Questions counts it); Since subtracts it.
func (c *Cluster) DBStatus() (DBStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := c.SQL.QueryContext(ctx, `SHOW GLOBAL STATUS`)
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
	return st, rows.Err()
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

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// every Linux this runs on.
const clockTicks = 100

// ProcessCPU is the user + system CPU time pid has used so far, its
// reaped children's included. A process that is gone reads as an error.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} {
		n, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat field %d: %w", pid, k+3, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// Processes names the cluster's processes by role, for per-process costs:
// "mariadb", "network" (simnetd or graphapid), "master", "coreapp" and
// "plugin" (the coreapps' transport plugins). Killed ones are left out.
func (c *Cluster) Processes() map[string][]int {
	out := map[string][]int{}
	add := func(role string, p *Proc) {
		if p != nil && !p.Exited() {
			out[role] = append(out[role], p.Pid())
		}
	}
	if pid := c.DB.PID(); pid != 0 {
		out["mariadb"] = []int{pid}
	}
	add("network", c.Simnet)
	add("network", c.Graph)
	for _, m := range c.Masters {
		add("master", m)
	}
	for _, a := range c.Coreapps {
		add("coreapp", a)
		if a != nil && !a.Exited() {
			out["plugin"] = append(out["plugin"], a.Children()...)
		}
	}
	return out
}

// CPUByRole sums ProcessCPU over each role's processes.
func CPUByRole(procs map[string][]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for role, pids := range procs {
		for _, pid := range pids {
			if d, err := ProcessCPU(pid); err == nil {
				out[role] += d
			}
		}
	}
	return out
}
