package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

// The Cloud API flavour of a test cluster (Options.CloudAPI): the coreapps
// run transport-cloudapi against the Graph API test server (graphapid),
// which validates every request against Meta's description and records
// which node sent what for which shard.
const (
	CloudPhoneID     = "106540352242922"
	CloudToken       = "EAAtest-cluster-token"
	CloudAppSecret   = "cluster-app-secret"
	CloudVerifyToken = "cluster-verify-token"
)

// StartGraphAPI starts graphapid on a free port (throughput unlimited
// unless args say otherwise) and sets c.GraphURL.
func (c *Cluster) StartGraphAPI(args ...string) {
	c.T.Helper()
	base := []string{"-listen", "127.0.0.1:0", "-phone-number-id", CloudPhoneID, "-access-token", CloudToken,
		"-app-secret", CloudAppSecret, "-throughput", "0", "-retry-for", "5m"}
	p := Start(c.T, c.Dir, "graphapid", filepath.Join(c.Bin, "graphapid"), nil, append(base, args...)...)
	c.Graph = p
	c.eventually(10*time.Second, "graphapid prints its URL", func() error {
		for _, l := range strings.Split(p.Log(), "\n") {
			if strings.HasPrefix(l, "http://") {
				c.GraphURL = strings.TrimSpace(l)
				return nil
			}
		}
		return fmt.Errorf("no URL in its output yet")
	})
}

// CloudEnv is a coreapp's environment for the Cloud API transport.
func (c *Cluster) CloudEnv() []string {
	return []string{"MC_TRANSPORT=" + filepath.Join(c.Bin, "transport-cloudapi"),
		"MC_CLOUDAPI_PHONE_NUMBER_ID=" + CloudPhoneID, "MC_CLOUDAPI_ACCESS_TOKEN=" + CloudToken,
		"MC_CLOUDAPI_BASE_URL=" + c.GraphURL, "MC_CLOUDAPI_THROUGHPUT=0", "MC_CLOUDAPI_UNKNOWN_WAIT=3s"}
}

// GraphDo makes a request to graphapid's control API (/_test/...).
func (c *Cluster) GraphDo(method, path string, body, out any) error {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, c.GraphURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("graphapid %s %s: HTTP %d %s", method, path, resp.StatusCode, buf.String())
	}
	if out != nil {
		return json.Unmarshal(buf.Bytes(), out)
	}
	return nil
}

// GraphState is graphapid's record of what it received and sent.
func (c *Cluster) GraphState() graphtest.State {
	c.T.Helper()
	var st graphtest.State
	if err := c.GraphDo("GET", "/_test/state", nil, &st); err != nil {
		c.T.Fatal(err)
	}
	return st
}

// GraphViolations are two nodes that sent for one shard at once, or an
// older epoch after a newer, as graphapid saw them.
func (c *Cluster) GraphViolations() graphtest.Violations {
	c.T.Helper()
	var v graphtest.Violations
	if err := c.GraphDo("GET", "/_test/violations", nil, &v); err != nil {
		c.T.Fatal(err)
	}
	return v
}

// coreappHealth is a coreapp's /internal/health.
type coreappHealth struct {
	Node      string `json:"node"`
	Primary   bool   `json:"primary"`
	Shard     int    `json:"shard"`
	Epoch     int64  `json:"epoch"`
	Connected bool   `json:"connected"`
}

// cloudShardsConnected reports each shard's connected primary, read from
// the coreapps themselves (a Cloud API claim is no network connection).
func (c *Cluster) cloudShardsConnected() (map[int]Interval, error) {
	out := map[int]Interval{}
	for _, p := range c.Coreapps {
		if p.Exited() {
			continue
		}
		st, body, err := c.Internal("GET", p.Addr, "/internal/health", "")
		if err != nil || st != 200 {
			continue
		}
		var h coreappHealth
		if json.Unmarshal(body, &h) != nil || !h.Primary || !h.Connected {
			continue
		}
		if prev, dup := out[h.Shard]; dup {
			return nil, fmt.Errorf("shard %d has two connected primaries: %s and %s", h.Shard, prev.Node, h.Node)
		}
		out[h.Shard] = Interval{Shard: h.Shard, Epoch: uint64(h.Epoch), Node: h.Node, Open: true}
	}
	for s := 0; s < c.Opts.Shards; s++ {
		if _, ok := out[s]; !ok {
			return out, fmt.Errorf("shard %d has no connected primary", s)
		}
	}
	return out, nil
}

// WaitCloudPrimary waits until shard has a connected primary other than
// not and returns its node id.
func (c *Cluster) WaitCloudPrimary(shard int, not string, d time.Duration) string {
	c.T.Helper()
	var node string
	c.eventually(d, fmt.Sprintf("shard %d served (not by %q)", shard, not), func() error {
		m, _ := c.cloudShardsConnected()
		iv, ok := m[shard]
		if !ok || iv.Node == not {
			return fmt.Errorf("shard %d: %+v", shard, m)
		}
		node = iv.Node
		return nil
	})
	return node
}
