package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// PatchSettings sends a settings document to the primary master, as an
// operator would, and fails the test if it is refused.
func (c *Cluster) PatchSettings(body string) {
	c.T.Helper()
	c.eventually(10*time.Second, "settings accepted by the primary master", func() error {
		addr, err := c.PrimaryMasterAddr()
		if err != nil {
			return err
		}
		code, out, err := c.Internal("PATCH", addr, "/v1/settings/application", body)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("HTTP %d: %s", code, out)
		}
		return nil
	})
}

// ShardPrimary is the address of the coreapp holding shard's claim, as the
// shard map in the database says.
func (c *Cluster) ShardPrimary(s int) (string, error) {
	var addr string
	err := c.SQL.QueryRow(`SELECT node_id FROM shard_claims WHERE shard_id = ? AND node_id IS NOT NULL AND lease_expires > NOW(6)`, s).Scan(&addr)
	if err != nil {
		return "", fmt.Errorf("no primary for shard %d: %w", s, err)
	}
	return addr, nil
}

// ShardOf is the recipient's shard in this cluster under the shard count
// the database holds now (re-sharding changes it).
func (c *Cluster) ShardOf(to string) int {
	n := c.Opts.Shards
	if err := c.SQL.QueryRow(`SELECT shards FROM cluster WHERE id = 1`).Scan(&n); err != nil {
		c.T.Logf("read the shard count: %v; assuming %d", err, n)
	}
	s, err := shard.For(to, n)
	if err != nil {
		c.T.Fatalf("shard of %q: %v", to, err)
	}
	return s
}

// PostMessage sends a message request straight to the primary coreapp of
// the recipient's shard (what the gateway does) with an optional
// idempotency key. It returns the HTTP status, the message id on 201, and
// the body.
func (c *Cluster) PostMessage(ctx context.Context, to, body, key string) (int, string, []byte, error) {
	addr, err := c.ShardPrimary(c.ShardOf(to))
	if err != nil {
		return 0, "", nil, err
	}
	return c.PostMessageTo(ctx, addr, body, key)
}

// PostMessageTo sends a message request to the coreapp at addr.
func (c *Cluster) PostMessageTo(ctx context.Context, addr, body, key string) (int, string, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/v1/messages", strings.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set(cluster.SecretHeader, c.Secret)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("X-Idempotency-Key", key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 {
		return resp.StatusCode, "", b, nil
	}
	var out struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Messages) != 1 || out.Messages[0].ID == "" {
		return resp.StatusCode, "", b, fmt.Errorf("201 without a message id: %s", b)
	}
	return resp.StatusCode, out.Messages[0].ID, b, nil
}

// NetworkMessage is a message the simulated network received.
type NetworkMessage struct {
	Seq    int64           `json:"seq"`
	ID     string          `json:"id"`
	To     string          `json:"to"`
	Type   string          `json:"type"`
	Body   json.RawMessage `json:"body"`
	Shard  int             `json:"shard"`
	Epoch  uint64          `json:"epoch"`
	ConnID int64           `json:"conn_id"`
	Node   string          `json:"node"`
}

// NetworkMessages returns what the network received (for one recipient
// when to is not empty), in arrival order.
func (c *Cluster) NetworkMessages(to string) []NetworkMessage {
	c.T.Helper()
	var out struct {
		Messages []NetworkMessage `json:"messages"`
	}
	path := "/v1/messages"
	if to != "" {
		path += "?to=" + to
	}
	if err := c.SimnetJSON(path, &out); err != nil {
		c.T.Fatalf("simnet messages: %v", err)
	}
	return out.Messages
}

// SimnetPost posts a JSON body to the network's API.
func (c *Cluster) SimnetPost(path string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	resp, err := c.http.Post("http://"+c.SimnetHTTP+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("simnet %s: HTTP %d: %s", path, resp.StatusCode, out)
	}
	return nil
}

// RequireInOrderOnce checks, at the network, that tos[i] received exactly
// accepted[i] (the ids its sends got 201 for), in that order, and that the
// network received nothing else: every acknowledged message arrived once
// and in acceptance order per recipient.
func (c *Cluster) RequireInOrderOnce(tos []string, accepted [][]string) {
	c.T.Helper()
	want := 0
	for _, ids := range accepted {
		want += len(ids)
	}
	c.Eventually(30*time.Second, "every accepted message at the network", func() error {
		if n := len(c.NetworkMessages("")); n < want {
			return fmt.Errorf("%d of %d at the network", n, want)
		}
		return nil
	})
	if n := len(c.NetworkMessages("")); n != want {
		c.T.Errorf("the network received %d messages, want exactly the %d accepted", n, want)
	}
	for i, to := range tos {
		got := c.NetworkMessages(to)
		ids := make([]string, len(got))
		for k, m := range got {
			ids[k] = m.ID
		}
		if fmt.Sprint(ids) != fmt.Sprint(accepted[i]) {
			c.T.Errorf("recipient %s: the network received\n%v\nwant, in acceptance order,\n%v", to, ids, accepted[i])
		}
	}
}
