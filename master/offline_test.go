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
// (TestOutageGraceOutlastsTheOthersReturn: the last holder back keeps it.)
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
		{"all four off for 5.2 s", []int64{5200, 5200, 5200, 5200}, ""},
		{"all four off for 5.3 s: past the grace", []int64{5300, 5300, 5300, 5300}, reasonOffline},
	} {
		mon := &monitor{m: &Master{log: slog.Default(), metrics: newMetrics()}, peers: map[string]*peer{}, claims: map[int]claimSeen{}}
		for i, off := range tc.off {
			id := fmt.Sprintf("h%d:1", i)
			mon.peers[id] = holder(id, i, off)
		}
		// A spare answering too: it holds nothing and is not counted.
		mon.peers["spare:1"] = &peer{id: "spare:1", incarnation: 7, lastOK: now, last: report{Node: "spare:1", Incarnation: 7, Shard: -1, TransportOK: true}}
		s := shardRow{shard: 0, node: "h0:1", incarnation: 7, epoch: 3, leaseLeft: time.Second, holderHasRow: true, nodeInc: 7}
		mon.noteOutage(now, unhealthy) // as evaluate does before it asks
		if got := mon.lost(s, nil, unhealthy, now); got != tc.want {
			t.Errorf("%s: lost says %q, want %q", tc.name, got, tc.want)
		}
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

// A holder that lost the network in an outage of most holders keeps the
// grace after the others reconnected: seen at 0.1/0.5 s under full load,
// the three that reconnected first ended the outage and the fourth, off
// since the same instant, was replaced at once. One that lost the network
// after the outage ended is judged as usual.
func TestOutageGraceOutlastsTheOthersReturn(t *testing.T) {
	const unhealthy = 500 * time.Millisecond
	now := monotime.Now()
	mon := &monitor{m: &Master{log: slog.Default(), metrics: newMetrics()}, peers: map[string]*peer{}, claims: map[int]claimSeen{}}
	set := func(id string, shard int, offMS int64) {
		var r report
		b := fmt.Appendf(nil, `{"node":%q,"incarnation":7,"primary":true,"shard":%d,"epoch":3,"connected":%v,"connect_due":true,
			"transport_ok":true,"db_age_ms":5,"off_ms":%d}`, id, shard, offMS == 0, offMS)
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		p := mon.peers[id]
		if p == nil {
			p = &peer{id: id, incarnation: 7, firstSeen: now - int64(time.Minute)}
			mon.peers[id] = p
		}
		p.last, p.lastOK = r, now
		p.noteConnection(now)
	}
	// All four off for 100 ms: an outage begins.
	for i := 0; i < 4; i++ {
		set(fmt.Sprintf("h%d:1", i), i, 100)
	}
	mon.noteOutage(now, unhealthy)
	if !mon.outage {
		t.Fatal("four of four holders off: no outage noted")
	}
	// 0.9 s later three are back; h0 is still off, since the outage.
	now += int64(900 * time.Millisecond)
	for i := 1; i < 4; i++ {
		set(fmt.Sprintf("h%d:1", i), i, 0)
	}
	set("h0:1", 0, 1000)
	for _, p := range mon.peers {
		p.lastOK = now
	}
	mon.noteOutage(now, unhealthy)
	if mon.outage {
		t.Fatal("one of four holders off: still an outage")
	}
	s := shardRow{shard: 0, node: "h0:1", incarnation: 7, epoch: 3, leaseLeft: time.Second, holderHasRow: true, nodeInc: 7}
	if got := mon.lost(s, nil, unhealthy, now); got != "" {
		t.Errorf("the last holder back from the outage, off 1 s: lost says %q, want it kept within the grace", got)
	}
	// Past the grace it is replaced.
	set("h0:1", 0, 5600)
	if got := mon.lost(s, nil, unhealthy, now); got != reasonOffline {
		t.Errorf("the last holder back from the outage, off 5.6 s: lost says %q, want %q", got, reasonOffline)
	}
	// h1 loses the network 2 s after the outage ended, alone: judged as usual.
	now += int64(2 * time.Second)
	set("h1:1", 1, 600)
	for _, p := range mon.peers {
		p.lastOK = now
	}
	s1 := shardRow{shard: 1, node: "h1:1", incarnation: 7, epoch: 3, leaseLeft: time.Second, holderHasRow: true, nodeInc: 7}
	set("h0:1", 0, 0)
	if got := mon.lost(s1, nil, unhealthy, now); got != reasonOffline {
		t.Errorf("a holder off alone 0.6 s, after the outage: lost says %q, want %q", got, reasonOffline)
	}
}
