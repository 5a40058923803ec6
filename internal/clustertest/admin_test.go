package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// /v1/support shows every node with its role, version and shard, and the
// schema; /v1/stats/app gathers every node's metrics in the original's
// shape and in the Prometheus format. Both are the primary master's: a
// secondary answers 1017.
func TestSupportAndAppStats(t *testing.T) {
	c := New(t, Options{})
	conn := c.WaitConnected(0, "", 10*time.Second)
	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	// A coreapp shows up once its first heartbeat is written; on a loaded
	// machine the third one can come a moment after shard 0 connected.
	var body []byte
	c.Eventually(10*time.Second, "every node in /v1/support", func() error {
		code, b, err := c.Internal("GET", primary, "/v1/support", "")
		if err != nil || code != 200 {
			return fmt.Errorf("support: %d %s %v", code, b, err)
		}
		body = b
		if n := strings.Count(string(b), `"role":"coreapp"`); n != 3 {
			return fmt.Errorf("%d coreapps listed", n)
		}
		return nil
	})
	var sup struct {
		Support struct {
			SchemaVersion int `json:"schema_version"`
			SchemaLatest  int `json:"schema_latest"`
			Shards        int `json:"shards"`
			Nodes         []struct {
				Key, Node, Role, Version string
				Shard                    *int
			}
		}
	}
	if err := json.Unmarshal(body, &sup); err != nil {
		t.Fatal(err)
	}
	s := sup.Support
	if s.SchemaVersion != s.SchemaLatest || s.SchemaVersion == 0 || s.Shards != 1 {
		t.Errorf("support: schema %d of %d, %d shards", s.SchemaVersion, s.SchemaLatest, s.Shards)
	}
	roles := map[string]int{}
	for _, n := range s.Nodes {
		roles[n.Role]++
		if n.Version == "" {
			t.Errorf("node %s reports no version", n.Node)
		}
		if n.Role == "coreapp" && (n.Shard == nil || (*n.Shard == 0) != (n.Node == conn.Node)) {
			t.Errorf("coreapp %s: shard %v, but the network has %s on shard 0", n.Node, n.Shard, conn.Node)
		}
	}
	if roles["primary_master"] != 1 || roles["secondary_master"] != 1 || roles["coreapp"] != 3 {
		t.Errorf("support roles: %v", roles)
	}

	code, body, _ := c.Internal("GET", primary, "/v1/stats/app", "")
	if code != 200 {
		t.Fatalf("stats/app: %d %s", code, body)
	}
	var st struct {
		Stats struct {
			App map[string]map[string]struct {
				Data []struct {
					Value float64
				}
				Type string
			}
		}
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Stats.App) != 5 {
		t.Errorf("stats/app has %d nodes, want 5: %s", len(st.Stats.App), body)
	}
	primaries := 0.0
	for key, metrics := range st.Stats.App {
		if m, ok := metrics["multiconnect_coreapp_is_primary"]; ok {
			if len(m.Data) != 1 || m.Type != "gauge" {
				t.Errorf("%s: multiconnect_coreapp_is_primary is %+v", key, m)
				continue
			}
			primaries += m.Data[0].Value
		}
	}
	if primaries != 1 {
		t.Errorf("stats/app: %v coreapps say they are primary, want 1", primaries)
	}
	code, body, _ = c.Internal("GET", primary, "/v1/stats/app?format=prometheus", "")
	text := string(body)
	if code != 200 || !strings.Contains(text, "# TYPE multiconnect_coreapp_is_primary gauge") ||
		strings.Count(text, "multiconnect_coreapp_is_primary{node=") != 3 || !strings.Contains(text, "multiconnect_master_is_primary{node=") {
		t.Errorf("stats/app?format=prometheus: %d\n%s", code, text)
	}

	for _, m := range c.Masters {
		if m.Addr == primary {
			continue
		}
		for _, path := range []string{"/v1/support", "/v1/stats/app"} {
			code, body, _ := c.Internal("GET", m.Addr, path, "")
			if code != 503 || !strings.Contains(string(body), `"code":1017`) {
				t.Errorf("secondary master %s: %d %s, want 503 with 1017", path, code, body)
			}
		}
	}
}

// /v1/stats/db counts what the database holds, in the original's gauges.
func TestDBStats(t *testing.T) {
	c := New(t, Options{Coreapps: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		code, _, body, err := c.PostMessage(ctx, "15550001", fmt.Sprintf(`{"to":"15550001","type":"text","text":{"body":"stats %d"}}`, i), "")
		if err != nil || code != 201 {
			t.Fatalf("send: %d %s %v", code, body, err)
		}
	}
	primary, _ := c.PrimaryMasterAddr()
	type gauge struct {
		Data []struct {
			Labels map[string]string
			Value  float64
		}
		Type string
	}
	c.Eventually(10*time.Second, "stats/db shows the messages, none pending", func() error {
		code, body, err := c.Internal("GET", primary, "/v1/stats/db", "")
		if err != nil || code != 200 {
			return fmt.Errorf("stats/db: %d %s %v", code, body, err)
		}
		var st struct {
			Stats struct{ DB map[string]map[string]gauge }
		}
		if err := json.Unmarshal(body, &st); err != nil {
			return err
		}
		if len(st.Stats.DB) != 1 {
			return fmt.Errorf("stats/db reports %d nodes, want the primary master alone: %s", len(st.Stats.DB), body)
		}
		for _, g := range st.Stats.DB {
			for _, name := range []string{"db_contacts", "db_message_receipts", "db_messages", "db_pending_callbacks", "db_pending_messages"} {
				if g[name].Type != "gauge" {
					return fmt.Errorf("%s missing: %s", name, body)
				}
			}
			if m := g["db_messages"]; len(m.Data) != 1 || m.Data[0].Labels["type"] != "text" || m.Data[0].Value != 3 {
				return fmt.Errorf("db_messages: %+v", m)
			}
			if p := g["db_pending_messages"]; len(p.Data) != 1 || p.Data[0].Value != 0 {
				return fmt.Errorf("db_pending_messages: %+v", p)
			}
		}
		return nil
	})
	code, body, _ := c.Internal("GET", primary, "/v1/stats/db?format=prometheus", "")
	if code != 200 || !strings.Contains(string(body), `db_messages{type="text"} 3`) || !strings.Contains(string(body), "# TYPE db_pending_messages gauge") {
		t.Errorf("stats/db?format=prometheus: %d\n%s", code, body)
	}
}
