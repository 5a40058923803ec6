package clustertest

import (
	"fmt"
	"time"
)

// Interval is one connection as the simulated network recorded it.
type Interval struct {
	ID        int64  `json:"id"`
	Shard     int    `json:"shard"`
	Epoch     uint64 `json:"epoch"`
	Node      string `json:"node"`
	Start     int64  `json:"start"` // server time, ns
	End       int64  `json:"end"`   // 0 while open
	EndReason string `json:"end_reason"`
	Open      bool   `json:"open"`
}

// Connections returns every interval the network recorded.
func (c *Cluster) Connections() []Interval {
	c.T.Helper()
	var out struct {
		Connections []Interval `json:"connections"`
	}
	if err := c.SimnetJSON("/v1/connections", &out); err != nil {
		c.T.Fatalf("simnet connections: %v", err)
	}
	return out.Connections
}

// Violations is the network's count of overlapping connections per shard.
func (c *Cluster) Violations() int {
	c.T.Helper()
	var out struct {
		Count int `json:"count"`
	}
	if err := c.SimnetJSON("/v1/violations", &out); err != nil {
		c.T.Fatalf("simnet violations: %v", err)
	}
	return out.Count
}

// RequireNoViolations fails the test if the network saw two connections for
// one shard at once, recomputing the overlap from the raw intervals too, so
// a miscount in the network cannot hide one.
func (c *Cluster) RequireNoViolations() {
	c.T.Helper()
	if n := c.Violations(); n != 0 {
		c.T.Errorf("the network counted %d violations (two connections for one shard at once)", n)
	}
	iv := c.Connections()
	now := time.Now().UnixNano() * 2 // open intervals extend to "forever"
	for i := range iv {
		for j := i + 1; j < len(iv); j++ {
			a, b := iv[i], iv[j]
			if a.Shard != b.Shard {
				continue
			}
			ae, be := a.End, b.End
			if a.Open {
				ae = now
			}
			if b.Open {
				be = now
			}
			if a.Start < be && b.Start < ae {
				c.T.Errorf("overlap on shard %d: %s epoch %d [%d,%d) and %s epoch %d [%d,%d)",
					a.Shard, a.Node, a.Epoch, a.Start, ae, b.Node, b.Epoch, b.Start, be)
			}
		}
	}
}

// OpenConnection returns the open connection of shard, if any.
func (c *Cluster) OpenConnection(shard int) (Interval, bool) {
	c.T.Helper()
	var found Interval
	ok := false
	for _, iv := range c.Connections() {
		if iv.Shard == shard && iv.Open {
			if ok {
				c.T.Errorf("shard %d has two open connections: %s and %s", shard, found.Node, iv.Node)
			}
			found, ok = iv, true
		}
	}
	return found, ok
}

// WaitConnected waits until shard has an open connection from a node other
// than not (any node if not is empty) and returns it.
func (c *Cluster) WaitConnected(shard int, not string, d time.Duration) Interval {
	c.T.Helper()
	var got Interval
	c.eventually(d, fmt.Sprintf("shard %d connected (not by %q)", shard, not), func() error {
		iv, ok := c.OpenConnection(shard)
		if !ok {
			return fmt.Errorf("no open connection")
		}
		if not != "" && iv.Node == not {
			return fmt.Errorf("still %s", iv.Node)
		}
		got = iv
		return nil
	})
	return got
}

// WaitAllShardsConnected waits for one open connection per shard, each from
// a different coreapp.
func (c *Cluster) WaitAllShardsConnected(d time.Duration) map[int]Interval {
	c.T.Helper()
	out := map[int]Interval{}
	if c.Opts.CloudAPI {
		c.eventually(d, "every shard served on the Cloud API", func() error {
			m, err := c.cloudShardsConnected()
			out = m
			return err
		})
		return out
	}
	c.eventually(d, "every shard connected", func() error {
		nodes := map[string]int{}
		for s := 0; s < c.Opts.Shards; s++ {
			iv, ok := c.OpenConnection(s)
			if !ok {
				return fmt.Errorf("shard %d has no connection", s)
			}
			if prev, dup := nodes[iv.Node]; dup {
				return fmt.Errorf("%s serves shards %d and %d", iv.Node, prev, s)
			}
			nodes[iv.Node] = s
			out[s] = iv
		}
		return nil
	})
	return out
}
