package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// Roles as stored in users.role.
const (
	roleAdmin = "ADMIN"
	roleUser  = "USER"
)

// principal is who sent a request.
type principal struct {
	username  string
	role      string
	tokenHash [32]byte // zero for the API key
	apiKey    bool
}

// tokenEntry is a token MySQL confirmed at checked. expires is the token's
// own end, computed from the time MySQL said was left, so the gateway's
// clock never has to agree with the database's.
type tokenEntry struct {
	username, role string
	checked        time.Time
	expires        time.Time
}

// tokenCache spares the hot path a MySQL query per request. An entry is
// trusted for token_cache after MySQL confirmed it, so a token revoked
// anywhere in the cluster stops working here within that bound.
type tokenCache struct {
	mu sync.RWMutex
	m  map[[32]byte]tokenEntry

	// unknown holds tokens MySQL did not know (never issued, expired or
	// revoked): none of them can become valid (a new token is random), so
	// a client repeating one costs no query.
	nmu     sync.Mutex
	unknown *generations[[32]byte, struct{}]
}

// maxUnknownTokens bounds the negative cache (two generations of it).
const maxUnknownTokens = 100000

// maxCachedTokens bounds the memory a flood of distinct valid tokens can
// take; past it, tokens are checked against MySQL every time.
const maxCachedTokens = 100000

func newTokenCache() *tokenCache {
	return &tokenCache{m: make(map[[32]byte]tokenEntry), unknown: newGenerations[[32]byte, struct{}](maxUnknownTokens)}
}

func (c *tokenCache) isUnknown(h [32]byte) bool {
	c.nmu.Lock()
	_, ok := c.unknown.get(h)
	c.nmu.Unlock()
	return ok
}

func (c *tokenCache) markUnknown(h [32]byte) {
	c.nmu.Lock()
	c.unknown.put(h, struct{}{})
	c.nmu.Unlock()
}

func (c *tokenCache) get(h [32]byte) (tokenEntry, bool) {
	c.mu.RLock()
	e, ok := c.m[h]
	c.mu.RUnlock()
	return e, ok
}

func (c *tokenCache) put(h [32]byte, e tokenEntry) {
	c.mu.Lock()
	if _, ok := c.m[h]; ok || len(c.m) < maxCachedTokens {
		c.m[h] = e
	}
	c.mu.Unlock()
}

func (c *tokenCache) drop(h [32]byte) {
	c.mu.Lock()
	delete(c.m, h)
	c.mu.Unlock()
}

// dropUser forgets every token of username (deleted, or its password or
// role changed), except keep.
func (c *tokenCache) dropUser(username string, keep [32]byte) {
	c.mu.Lock()
	for h, e := range c.m {
		if e.username == username && h != keep {
			delete(c.m, h)
		}
	}
	c.mu.Unlock()
}

// sweep drops entries that can no longer be served even as stale.
func (c *tokenCache) sweep(now time.Time) {
	c.mu.Lock()
	for h, e := range c.m {
		if now.After(e.expires) || now.Sub(e.checked) > time.Hour {
			delete(c.m, h)
		}
	}
	c.mu.Unlock()
}

func hashToken(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// unauthenticated answers 401: the caller is unknown. 1005 is the
// original's code for it; 403 stays for a known caller without the right.
func unauthenticated(details string) *requestError {
	return &requestError{http.StatusUnauthorized, apierror.AccessDenied, details}
}

// authenticate identifies the caller of rt and checks its right to call it.
func (g *Gateway) authenticate(r *http.Request, rt route) (principal, *requestError) {
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer") && cred != "":
		p, rerr := g.verifyToken(r.Context(), cred)
		if rerr != nil {
			return p, rerr
		}
		if rt.access == admin && p.role != roleAdmin {
			g.view.metrics.authFail.WithLabelValues("role").Inc()
			return p, &requestError{0, apierror.AccessDenied, "this route needs an ADMIN user"}
		}
		return p, nil
	case strings.EqualFold(scheme, "Apikey") && cred != "":
		if g.apiKey == "" {
			g.view.metrics.authFail.WithLabelValues("apikey").Inc()
			return principal{}, unauthenticated("API keys are not enabled on this gateway (set WA_API_KEY); use a bearer token")
		}
		if subtle.ConstantTimeCompare([]byte(cred), []byte(g.apiKey)) != 1 {
			g.view.metrics.authFail.WithLabelValues("apikey").Inc()
			return principal{}, unauthenticated("invalid API key")
		}
		if rt.access != monitor {
			g.view.metrics.authFail.WithLabelValues("role").Inc()
			return principal{apiKey: true}, &requestError{0, apierror.AccessDenied, "the API key opens only /v1/health, /metrics and /v1/stats; use a bearer token"}
		}
		return principal{apiKey: true, username: "apikey"}, nil
	}
	g.view.metrics.authFail.WithLabelValues("missing").Inc()
	return principal{}, unauthenticated("send Authorization: Bearer <token>; get a token from POST /v1/users/login")
}

// verifyToken checks a bearer token: from the cache while the entry is
// fresh, else against MySQL. While MySQL is unreachable, an entry confirmed
// within token_grace keeps working, so the gateway keeps serving with what
// it knows (a token revoked during such an outage stops working once this
// gateway reaches MySQL again).
func (g *Gateway) verifyToken(ctx context.Context, token string) (principal, *requestError) {
	v := g.view
	h := hashToken(token)
	now := time.Now()
	e, cached := v.tokens.get(h)
	if cached && now.Before(e.expires) && now.Sub(e.checked) < time.Duration(g.TokenCache) {
		v.metrics.tokenCache.WithLabelValues("hit").Inc()
		return principal{username: e.username, role: e.role, tokenHash: h}, nil
	}
	if !cached {
		// A token this gateway has not confirmed: known to be unknown, or
		// asked about at most token_lookup_rate times a second, so random
		// tokens cannot turn into a flood of MySQL queries. Tokens in the
		// cache are re-checked without this limit.
		if v.tokens.isUnknown(h) {
			v.metrics.tokenCache.WithLabelValues("unknown").Inc()
			v.metrics.authFail.WithLabelValues("token").Inc()
			return principal{}, unauthenticated("the token is invalid, expired or revoked: log in again")
		}
		if g.lookups != nil && !g.lookups.Allow() {
			v.metrics.authFail.WithLabelValues("token_rate").Inc()
			return principal{}, &requestError{http.StatusTooManyRequests, apierror.TooManyRequests, "too many checks of unknown tokens right now; retry in a second"}
		}
	}
	v.metrics.tokenCache.WithLabelValues("miss").Inc()
	db := v.db.Load()
	var err error
	if db == nil {
		err = errors.New("not connected to MySQL yet")
	} else {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var left int64
		err = db.QueryRowContext(qctx, `SELECT t.username, u.role, TIMESTAMPDIFF(MICROSECOND, NOW(6), t.expires_at)
			FROM tokens t JOIN users u ON u.username = t.username
			WHERE t.token_hash = ? AND t.revoked = 0 AND t.expires_at > NOW(6)`, hex.EncodeToString(h[:])).Scan(&e.username, &e.role, &left)
		cancel()
		if err == nil {
			e.checked = now
			e.expires = now.Add(time.Duration(left) * time.Microsecond)
			v.tokens.put(h, e)
			return principal{username: e.username, role: e.role, tokenHash: h}, nil
		}
	}
	if errors.Is(err, sql.ErrNoRows) {
		v.tokens.drop(h)
		v.tokens.markUnknown(h)
		v.metrics.authFail.WithLabelValues("token").Inc()
		return principal{}, unauthenticated("the token is invalid, expired or revoked: log in again")
	}
	if cached && now.Before(e.expires) && g.TokenGrace > 0 && now.Sub(e.checked) < time.Duration(g.TokenCache+g.TokenGrace) {
		v.metrics.tokenCache.WithLabelValues("stale").Inc()
		return principal{username: e.username, role: e.role, tokenHash: h}, nil
	}
	g.log.Warn("cannot verify a bearer token", zap.Error(err))
	return principal{}, &requestError{0, apierror.ServiceUnavailable, "cannot verify the token now: the database is unreachable"}
}
