package clustertest

import (
	"context"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
)

// DBStatus reads MariaDB's global status counters (see measure.DBStatus).
func (c *Cluster) DBStatus() (measure.DBStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return measure.ReadDBStatus(ctx, c.SQL)
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
