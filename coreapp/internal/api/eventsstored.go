package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// serveEventsStored is POST /internal/events-stored {"shard":N}: a gateway
// committed new Cloud API webhook rows for shard N and tells the shard's
// primary, which passes it to its plugin (transport.OpEventsStored) so the
// plugin reads them now instead of at its slow safety poll. A coreapp that
// is not N's primary answers 1018: the gateway's map is stale, and it
// reloads it and tells the primary it finds there.
func (s *Server) serveEventsStored(ctx *fasthttp.RequestCtx, _ map[string]string) {
	var in transport.EventsStored
	if err := json.Unmarshal(ctx.PostBody(), &in); err != nil {
		reply.Error(ctx, apierror.RequestNotValid, "events-stored: "+err.Error())
		return
	}
	if st := s.Claim.Status(); !st.Primary || st.Shard != in.Shard {
		reply.Error(ctx, apierror.NotPrimaryCoreapp, fmt.Sprintf("this coreapp is not the primary of shard %d", in.Shard))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := transport.ErrNotRunning
	s.Plugins.With(func(t transport.Transport, _ uint64) { _, err = t.Call(cctx, transport.OpEventsStored, ctx.PostBody()) })
	if err != nil && !errors.Is(err, transport.ErrUnsupported) {
		// The plugin reads them at its safety poll, or on its next
		// connection if it is restarting.
		reply.Error(ctx, apierror.ServiceUnavailable, "the transport plugin was not told: "+err.Error())
		return
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
