package cloudapi

import (
	"context"
	"fmt"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Info implements transport.Transport. It needs no request: the Graph API
// has no connection to describe.
func (t *Transport) Info(context.Context) (transport.Info, error) {
	return transport.Info{Name: Name, Version: t.cfg.GraphVersion, KeepaliveTimeout: KeepaliveTimeout}, nil
}

// Connect implements transport.Transport: it takes the claim (nothing goes
// to the network; the deadline governs every later request). Connecting
// again with the same shard and epoch only moves the deadline.
func (t *Transport) Connect(_ context.Context, req transport.ConnectRequest) error {
	what := fmt.Sprintf("connect shard %d epoch %d", req.Shard, req.Epoch)
	if transport.Until(req.Deadline) <= 0 {
		return fmt.Errorf("%s: %w", what, transport.ErrDeadlinePassed)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.connected && transport.Until(t.claim.Deadline) > 0 && t.claim.Shard == req.Shard && t.claim.Epoch == req.Epoch {
		t.claim.Deadline = req.Deadline
		t.learnLayoutLocked(req.Shard, req.Layout)
		return nil
	}
	if t.connected {
		t.log.Info("claim replaced", "shard", t.claim.Shard, "epoch", t.claim.Epoch, "by_shard", req.Shard, "by_epoch", req.Epoch)
	}
	t.endClaimLocked()
	done, end := context.WithCancel(context.Background())
	t.claim = Claim{Shard: req.Shard, Epoch: req.Epoch, Node: req.Node, Deadline: req.Deadline, Conn: t.newConnLocked(), done: done}
	t.endClaim = end
	t.claimFirstConn = t.claim.Conn
	t.learnLayoutLocked(req.Shard, req.Layout)
	t.connected, t.lastErr = true, ""
	delete(t.acked, req.Shard)
	// The backlog the previous holder left is read at once.
	t.wakeLocked()
	t.log.Info("claim taken: sending for the shard", "shard", req.Shard, "epoch", req.Epoch, "node", req.Node,
		"deadline_in", transport.Until(req.Deadline).String())
	return nil
}

// newConnLocked returns a Conn number above every earlier one, also across
// plugin restarts (it starts from the wall clock).
func (t *Transport) newConnLocked() int64 {
	c := time.Now().UnixNano()
	if c <= t.lastConn {
		c = t.lastConn + 1
	}
	t.lastConn = c
	return c
}

// Extend implements transport.Transport.
func (t *Transport) Extend(_ context.Context, epoch uint64, deadline int64, layout transport.Layout) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.currentLocked()
	if err != nil {
		return fmt.Errorf("extend epoch %d: %w", epoch, err)
	}
	if c.Epoch != epoch {
		return fmt.Errorf("extend epoch %d: claim is for epoch %d: %w", epoch, c.Epoch, transport.ErrEpochMismatch)
	}
	if transport.Until(deadline) <= 0 {
		t.connected, t.lastErr = false, "deadline moved into the past"
		t.endClaimLocked()
		return fmt.Errorf("extend epoch %d: new deadline is in the past: %w", epoch, transport.ErrDeadlinePassed)
	}
	t.claim.Deadline = deadline
	t.learnLayoutLocked(c.Shard, layout)
	return nil
}

// learnLayoutLocked gives the engine its shard and the newest shard count:
// its share of the number's throughput.
func (t *Transport) learnLayoutLocked(shard int, l transport.Layout) {
	if l.Shards > 0 && l.Version >= t.layout.Version {
		if t.layout.Shards != 0 && l.Shards != t.layout.Shards {
			// The re-shard moved other shards' unacknowledged rows to
			// the end of this one's stream (inbound.RelayoutTx).
			t.wakeLocked()
		}
		t.layout = l
	}
	if t.engine != nil {
		t.engine.SetLayout(shard, max(t.layout.Shards, 1))
		t.engine.SetNode(t.claim.Node)
	}
}

// Disconnect implements transport.Transport: after it, no request goes out
// for the claim (one in flight is bounded by the deadline it carries).
func (t *Transport) Disconnect(context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.connected {
		t.log.Info("claim given up", "shard", t.claim.Shard, "epoch", t.claim.Epoch)
	}
	t.connected, t.lastErr = false, "disconnected"
	t.endClaimLocked()
	return nil
}

// endClaimLocked cuts the requests still in flight under the claim: after
// Disconnect (or a replaced or lapsed claim) nothing more of it reaches the
// network.
func (t *Transport) endClaimLocked() {
	if t.endClaim != nil {
		t.endClaim()
		t.endClaim = nil
	}
}

// Close gives the claim up; the plugin's main calls it when the host leaves.
func (t *Transport) Close() error { return t.Disconnect(context.Background()) }

// Health implements transport.Transport. LastError is the token error
// while the Graph API refuses the access token (sending is stopped), else
// why the plugin is not connected.
func (t *Transport) Health(context.Context) (transport.Health, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.currentLocked()
	h := transport.Health{LastError: t.lastErr}
	if err == nil {
		h = transport.Health{Connected: true, Shard: c.Shard, Epoch: c.Epoch, Deadline: c.Deadline}
	}
	if t.tokenErr != "" {
		h.LastError = t.tokenErr
	} else if t.engine != nil {
		if e := t.engine.TokenError(); e != "" {
			h.LastError = "access token refused by the Graph API (code 190): set a valid MC_CLOUDAPI_ACCESS_TOKEN (" + redact(e, t.cfg.AccessToken) + ")"
		}
	}
	return h, nil
}
