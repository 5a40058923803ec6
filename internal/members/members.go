// Package members lists the cluster's registered nodes and calls their
// internal ports as a member (with the cluster secret). The primary master
// uses it to gather every node's stats and support information; the key it
// gives each node is the original's hostname:container.
package members

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// Node is one registered master or coreapp.
type Node struct {
	ID          string `json:"node"` // host:port other nodes reach it at
	Role        string `json:"-"`    // nodes.role: master or coreapp
	Hostname    string `json:"hostname"`
	Container   string `json:"container"`
	Incarnation int64  `json:"incarnation"`
	Version     string `json:"version"`
	LastSeen    time.Time
	Key         string `json:"-"` // hostname:container, made unique by Keys
}

// List reads the nodes that wrote their liveness within seen.
func List(ctx context.Context, q cluster.Querier, seen time.Duration) ([]Node, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, role, hostname, container, incarnation, version, last_seen FROM nodes
		WHERE last_seen > NOW(6) - INTERVAL ? MICROSECOND ORDER BY id`, seen.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		if err := rows.Scan(&n.ID, &n.Role, &n.Hostname, &n.Container, &n.Incarnation, &n.Version, &n.LastSeen); err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	Keys(out)
	return out, nil
}

// Keys sets each node's Key to hostname:container, as the original keyed
// its health and stats. Processes that share a host and container (several
// on one machine outside Docker) get their address's port appended, so none
// hides another.
func Keys(nodes []Node) {
	count := map[string]int{}
	for _, n := range nodes {
		count[n.Hostname+":"+n.Container]++
	}
	for i := range nodes {
		n := &nodes[i]
		n.Key = n.Hostname + ":" + n.Container
		if count[n.Key] > 1 {
			_, port := splitPort(n.ID)
			n.Key += ":" + port
		}
	}
}

func splitPort(id string) (string, string) {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == ':' {
			return id[:i], id[i+1:]
		}
	}
	return id, ""
}

// Client calls nodes' internal ports.
type Client struct {
	HTTP   *http.Client
	Secret func() string
}

// Answer is one node's reply to Client.Each.
type Answer struct {
	Node   Node
	Status int
	Body   []byte
	Err    error
}

// Get calls GET path on node and returns the status and body.
func (c *Client) Get(ctx context.Context, n Node, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.ID+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set(cluster.SecretHeader, c.Secret())
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}

// Each calls GET path on every node at once, each bounded by timeout, and
// returns the answers in the order of nodes.
func (c *Client) Each(ctx context.Context, nodes []Node, path string, timeout time.Duration) []Answer {
	out := make([]Answer, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			status, body, err := c.Get(cctx, n, path)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("%s answered HTTP %d", path, status)
			}
			out[i] = Answer{Node: n, Status: status, Body: body, Err: err}
		}()
	}
	wg.Wait()
	return out
}
