package main

import "time"

// clockRead is one reading of the database's clock (NOW(6), µs since
// 2000-01-01) and when, on this master's monotonic clock, the statement that
// read it was sent and its answer received: the server read its clock
// somewhere between the two.
type clockRead struct {
	dbUS       int64
	sent, recv int64 // monotime ns
}

func (r clockRead) rtt() time.Duration { return time.Duration(r.recv - r.sent) }

// stepSlack is how far the database's clock may run ahead of this master's
// between two readings without counting as a step: 1 % of the time between
// them (clock-rate drift; NTP slews at most 0.05 %) plus 1 ms.
func stepSlack(elapsed time.Duration) time.Duration { return elapsed/100 + time.Millisecond }

// frameErr compares two readings, a before b. If the database's clock
// advanced between them as far as this master's could have (no step either
// way, beyond the slack), it returns how far a step could still have gone
// unnoticed (the two round trips and the slack), else -1. A forward step
// makes claims look older than they are; a backward one makes claims renewed
// during it look older once the clock is put right.
func frameErr(a, b clockRead) time.Duration {
	maxElapsed, minElapsed := time.Duration(b.recv-a.sent), time.Duration(b.sent-a.recv)
	if a.sent == 0 || minElapsed < 0 {
		return -1
	}
	slack := stepSlack(maxElapsed)
	if d := time.Duration(b.dbUS-a.dbUS) * time.Microsecond; d > maxElapsed+slack || d < minElapsed-slack {
		return -1
	}
	return a.rtt() + b.rtt() + slack
}
