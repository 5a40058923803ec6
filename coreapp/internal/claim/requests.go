package claim

import "time"

// The masters' requests, which the api stage forwards: each is a message to
// Run's loop, which makes every decision.

// Nudge asks the holder to look at the shard map now (a master's demote,
// a plugin restart). It never blocks: one pending nudge is enough.
func (h *Holder) Nudge() {
	select {
	case h.nudge <- struct{}{}:
	default:
	}
}

// Assign hands the holder the primary master's promotion to shard under
// epoch. False: the holder is busy; it finds the assignment in the shard
// map by itself.
func (h *Holder) Assign(shard int, epoch int64) bool {
	select {
	case h.assign <- assignment{shard: shard, epoch: epoch}:
		return true
	default:
		return false
	}
}

// Release asks the holder to give up its claim on shard under epoch while
// it is not connected to the network (see giveUp), waiting up to wait for
// the loop to take the request. ok false: the loop was busy (the claim
// lapses by itself); released: the claim was handed back in the database,
// not only dropped.
func (h *Holder) Release(shard int, epoch int64, wait time.Duration) (released, ok bool) {
	r := releaseReq{shard: shard, epoch: epoch, done: make(chan bool, 1)}
	select {
	case h.release <- r:
	case <-time.After(wait):
		return false, false
	}
	return <-r.done, true
}
