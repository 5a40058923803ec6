package database

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// The single-server compose layout must fit MySQL's default
// max_connections with room to spare for an operator's client and a
// gateway config reload (which briefly holds two pools). The layout is read
// from the compose file itself, so adding a service there is checked too.
func TestComposeLayoutFitsDefaultMaxConnections(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docker", "multiconnect-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	count := func(image string) int {
		return len(regexp.MustCompile(`(?m)^\s+image:\s*multiconnect/`+image+`:`).FindAll(b, -1))
	}
	masters, coreapps, gateways := count("master"), count("coreapp"), count("web")
	if masters != 2 || coreapps != 3 || gateways != 1 {
		t.Fatalf("compose layout: %d masters, %d coreapps, %d gateways; the README's budget describes 2, 3 and 1",
			masters, coreapps, gateways)
	}
	total := Budget(masters, coreapps, gateways)
	t.Logf("compose layout: %d masters x %d + %d coreapps x %d + %d gateway x %d = %d connections of %d",
		masters, MasterConns, coreapps, CoreappConns, gateways, GatewayConns, total, DefaultMaxConnections)
	if spare := DefaultMaxConnections - total - GatewayConns; spare < 10 {
		t.Errorf("compose layout opens up to %d connections (%d during a gateway reload); MySQL's default max_connections is %d",
			total, total+GatewayConns, DefaultMaxConnections)
	}
}

// Every pool gets the session lock wait bound and its size.
func TestDSNBoundsLockWaits(t *testing.T) {
	c := Config{User: "u", Host: "h", Port: 3306}
	for _, tc := range []struct {
		wait time.Duration
		want string
	}{{0, "innodb_lock_wait_timeout=1"}, {1500 * time.Millisecond, "innodb_lock_wait_timeout=2"}, {3 * time.Second, "innodb_lock_wait_timeout=3"}} {
		c.LockWait = tc.wait
		if dsn := c.dsn("db"); !regexp.MustCompile(regexp.QuoteMeta(tc.want) + `(&|$)`).MatchString(dsn) {
			t.Errorf("LockWait %v: DSN %q lacks %s", tc.wait, dsn, tc.want)
		}
	}
}
