package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/monotime"
)

// A holder is replaced as "not connected to the network" only when its own
// answers say it has been off the network for unhealthy_interval, not when
// this master first heard it off that long ago: a holder whose connection
// dropped and came back between two answers (a keepalive drop on a loaded
// machine, mended by a reconnection at the same epoch) and then dropped
// again was counted as off all along.
func TestOfflineIsJudgedOnTheHoldersAnswers(t *testing.T) {
	const unhealthy = 250 * time.Millisecond
	now := monotime.Now()
	answer := func(offMS int64) report {
		var r report
		b := fmt.Appendf(nil, `{"node":"a:1","incarnation":7,"primary":true,"shard":0,"epoch":3,"connected":false,"connect_due":true,
			"transport_ok":true,"db_age_ms":5,"off_ms":%d}`, offMS)
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	s := shardRow{shard: 0, node: "a:1", incarnation: 7, epoch: 3, leaseLeft: time.Second, holderHasRow: true, nodeInc: 7}
	for _, tc := range []struct {
		name  string
		offMS int64 // what the last answer says
		want  string
	}{
		{"off again for 20 ms after a reconnection", 20, ""},
		{"off for 300 ms", 300, reasonOffline},
	} {
		p := &peer{id: "a:1", incarnation: 7, firstSeen: now - int64(time.Second)}
		// First heard off 300 ms ago; the last answer, just now, still off.
		p.last = answer(tc.offMS)
		p.lastOK = now - 300*ms
		p.noteConnection(now - 300*ms)
		p.lastOK = now
		p.noteConnection(now)
		mon := &monitor{m: &Master{log: slog.Default()}, peers: map[string]*peer{"a:1": p}, claims: map[int]claimSeen{}}
		if got := mon.lost(s, nil, unhealthy, now); got != tc.want {
			t.Errorf("%s: lost says %q, want %q", tc.name, got, tc.want)
		}
	}
}
