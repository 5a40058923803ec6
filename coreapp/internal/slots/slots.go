package main

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/database"
)

const (
	// requestSlots bounds the users' requests doing database work at once
	// (media lookups and uploads, contacts). The rest of CoreappPool stays
	// for the group commits (acceptFlushers), outbox, callbacks, settings
	// and liveness, so request traffic cannot take every connection.
	requestSlots = database.CoreappPool - 8
	// slotWait is how long a request queues for a slot before it is
	// answered 429 (1015) with Retry-After: a client backs off instead of
	// piling more waiting requests on a saturated database.
	slotWait = time.Second
)

// slots is a counting semaphore.
type slots chan struct{}

func newSlots(n int) slots { return make(slots, n) }

// acquire takes a slot, waiting up to slotWait. On false the request has
// been answered.
func (s slots) acquire(ctx *fasthttp.RequestCtx) bool {
	select {
	case s <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(slotWait)
	defer t.Stop()
	select {
	case s <- struct{}{}:
		return true
	case <-t.C:
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, apierror.TooManyRequests, "too many requests at once: retry later")
		return false
	}
}

func (s slots) release() { <-s }
