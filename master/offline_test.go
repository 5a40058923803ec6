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

// When most holders are off the network at once, the network is out for
// everyone and a successor could not connect either: a holder off for
// unhealthy_interval is replaced only after outageGrace more. One holder
// off alone is replaced at unhealthy_interval, as before.
func TestNetworkWideOutageDefersOfflinePromotions(t *testing.T) {
	const unhealthy = 250 * time.Millisecond
	now := monotime.Now()
	holder := func(id string, shard int, offMS int64) *peer {
		var r report
		b := fmt.Appendf(nil, `{"node":%q,"incarnation":7,"primary":true,"shard":%d,"epoch":3,"connected":%v,"connect_due":true,
			"transport_ok":true,"db_age_ms":5,"off_ms":%d}`, id, shard, offMS == 0, offMS)
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		p := &peer{id: id, incarnation: 7, firstSeen: now - int64(time.Minute), last: r, lastOK: now - int64(time.Duration(offMS)*time.Millisecond)}
		p.noteConnection(p.lastOK)
		p.lastOK = now - 10*ms
		p.noteConnection(p.lastOK)
		return p
	}
	for _, tc := range []struct {
		name string
		off  []int64 // per holder of shards 0..3: how long it says it has been off (0: connected)
		want string  // for shard 0
	}{
		{"shard 0's holder off alone for 300 ms", []int64{300, 0, 0, 0}, reasonOffline},
		{"two of four off for 300 ms", []int64{300, 280, 0, 0}, reasonOffline},
		{"three of four off for 300 ms", []int64{300, 290, 270, 0}, ""},
		{"all four off for 300 ms", []int64{300, 300, 300, 300}, ""},
		{"all four off for 1.2 s", []int64{1200, 1200, 1200, 1200}, ""},
		{"all four off for 1.3 s: past the grace", []int64{1300, 1300, 1300, 1300}, reasonOffline},
	} {
		mon := &monitor{m: &Master{log: slog.Default(), metrics: newMetrics()}, peers: map[string]*peer{}, claims: map[int]claimSeen{}}
		for i, off := range tc.off {
			id := fmt.Sprintf("h%d:1", i)
			mon.peers[id] = holder(id, i, off)
		}
		// A spare answering too: it holds nothing and is not counted.
		mon.peers["spare:1"] = &peer{id: "spare:1", incarnation: 7, lastOK: now, last: report{Node: "spare:1", Incarnation: 7, Shard: -1, TransportOK: true}}
		s := shardRow{shard: 0, node: "h0:1", incarnation: 7, epoch: 3, leaseLeft: time.Second, holderHasRow: true, nodeInc: 7}
		if got := mon.lost(s, nil, unhealthy, now); got != tc.want {
			t.Errorf("%s: lost says %q, want %q", tc.name, got, tc.want)
		}
		mon.noteOutage(now, unhealthy)
		off := 0
		for _, o := range tc.off {
			if o > 0 {
				off++
			}
		}
		if wide := off >= 3; mon.outage != wide {
			t.Errorf("%s: outage %v, want %v", tc.name, mon.outage, wide)
		}
	}
}
