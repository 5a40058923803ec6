// Package slots bounds the users' requests that do database work at once
// (media lookups and uploads, contacts, the network's REST calls): a
// counting semaphore whose acquire answers 429 when a request waited too
// long. The api stage takes a slot around its slot routes; accept takes
// one around its media check. It depends only on reply.
package slots

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/database"
)

const (
	// RequestSlots bounds the users' requests doing database work at once
	// (media lookups and uploads, contacts). The rest of CoreappPool stays
	// for the group commit (one in flight), outbox, callbacks, settings
	// and liveness, so request traffic cannot take every connection.
	RequestSlots = database.CoreappPool - 8
	// slotWait is how long a request queues for a slot before it is
	// answered 429 (1015) with Retry-After: a client backs off instead of
	// piling more waiting requests on a saturated database.
	slotWait = time.Second
)

// Slots is a counting semaphore.
type Slots chan struct{}

// New makes n slots.
func New(n int) Slots { return make(Slots, n) }

// Acquire takes a slot, waiting up to slotWait. On false the request has
// been answered.
func (s Slots) Acquire(ctx *fasthttp.RequestCtx) bool {
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
		reply.Error(ctx, apierror.TooManyRequests, "too many requests at once: retry later")
		return false
	}
}

// Release gives back a slot Acquire took.
func (s Slots) Release() { <-s }
