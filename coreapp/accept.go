package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// IdempotencyHeader carries a client's key for POST /v1/messages: a retry
// with the same key (after a timeout, say) returns the first message's id
// instead of sending the message twice. A key is scoped by the user (the
// gateway's cluster.UserHeader) and the recipient's digits, and bound to
// the message: the same key with another message is refused with 422.
const IdempotencyHeader = "X-Idempotency-Key"

const (
	maxIdemKey = 128
	// maxBatchRows and maxBatchBytes bound one group commit: a multi-row
	// INSERT of 200 rows costs about as much as one row (one fsync), and
	// stays well under max_allowed_packet.
	maxBatchRows  = 200
	maxBatchBytes = 4 << 20
	// acceptTimeout bounds how long a request waits for its commit. A
	// request that times out may still commit: the client retries with
	// its idempotency key.
	acceptTimeout = 10 * time.Second
	// acceptFlushers is how many group commits may be in flight at once.
	acceptFlushers = 3
)

// acceptReq is one message waiting for a group commit.
type acceptReq struct {
	msg   *outMessage
	scope string // idemScope of the idempotency key, "" when none
	done  chan acceptResult
}

type acceptResult struct {
	id      string
	code    int // 0: committed
	status  int // HTTP status when not the code's usual one
	details string
}

// idemScope is what an idempotency key is stored as: a hash of the user,
// the recipient's digits and the key, so the same key means the same
// message only for one user and one recipient however it is written.
func idemScope(user, to, key string) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(user), shard.Digits(to), []byte(key)} {
		// Length-prefixed, so no two different triples hash the same bytes.
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// keyReused answers a request whose idempotency key was already used, for
// the same user and recipient, with a different message. 422 (as the IETF
// Idempotency-Key draft answers a reused key) with 1009: the header's
// value is not valid for this body. Nothing is stored.
func keyReused(id string) acceptResult {
	return acceptResult{code: apierror.ParameterInvalid, status: fasthttp.StatusUnprocessableEntity,
		details: IdempotencyHeader + " was already used for a different message (" + id + ") to this recipient; use a new key for a new message"}
}

// acceptor collects concurrent accept requests and commits them in few
// transactions: each of acceptFlushers goroutines runs one transaction at a
// time, and whatever queued up meanwhile goes into the next one (group
// commit without a timer: an idle coreapp commits at once, a busy one
// batches by itself). Several flushers keep the database busy while one
// waits for its fsync. Order is safe: a request sent after another's 201
// is inserted after that one committed, so it gets a higher seq; requests
// in flight together were never ordered.
type acceptor struct {
	c  *Coreapp
	in chan *acceptReq
}

func newAcceptor(c *Coreapp) *acceptor {
	return &acceptor{c: c, in: make(chan *acceptReq, 8192)}
}

// postMessage serves POST /v1/messages.
func (c *Coreapp) postMessage(ctx *fasthttp.RequestCtx) {
	if !c.holder.status().Primary {
		writeError(ctx, apierror.NotPrimaryCoreapp, "this coreapp is not the primary of any shard")
		return
	}
	msg, bad := parseMessage(ctx.PostBody())
	if bad != nil {
		writeError(ctx, bad.code, bad.details)
		return
	}
	key := strings.TrimSpace(string(ctx.Request.Header.Peek(IdempotencyHeader)))
	if len(key) > maxIdemKey {
		writeError(ctx, apierror.ParameterInvalid, fmt.Sprintf("%s is longer than %d characters", IdempotencyHeader, maxIdemKey))
		return
	}
	if code, details := c.providerMedia(ctx, msg); code != 0 {
		writeError(ctx, code, details)
		return
	}
	if len(msg.MediaIDs) > 0 {
		if !c.slots.acquire(ctx) {
			return
		}
		code, details := c.media.checkIDs(ctx, msg.MediaIDs)
		c.slots.release()
		if code != 0 {
			writeError(ctx, code, details)
			return
		}
	}
	req := &acceptReq{msg: msg, done: make(chan acceptResult, 1)}
	if key != "" {
		// The user header is believed: the request carried the cluster
		// secret, and the gateway sets the header after dropping a client's.
		req.scope = idemScope(string(ctx.Request.Header.Peek(cluster.UserHeader)), msg.To, key)
	}
	timer := time.NewTimer(acceptTimeout)
	defer timer.Stop()
	select {
	case c.acceptor.in <- req:
	case <-timer.C:
		writeError(ctx, apierror.ServiceUnavailable, "too busy to accept the message; retry with the same "+IdempotencyHeader)
		return
	}
	select {
	case r := <-req.done:
		if r.code != 0 {
			writeError(ctx, r.code, r.details)
			if r.status != 0 {
				ctx.SetStatusCode(r.status)
			}
			return
		}
		c.metrics.accepted.Inc()
		ctx.SetContentType("application/json")
		ctx.SetStatusCode(fasthttp.StatusCreated)
		ctx.SetBodyString(`{"messages":[{"id":"` + r.id + `"}]}`)
	case <-timer.C:
		writeError(ctx, apierror.ServiceUnavailable, "the database did not confirm in time; the message may be stored: retry with the same "+IdempotencyHeader)
	}
}

func (a *acceptor) run(ctx context.Context) {
	for i := 1; i < acceptFlushers; i++ {
		go a.flush(ctx)
	}
	a.flush(ctx)
}

func (a *acceptor) flush(ctx context.Context) {
	for {
		var first *acceptReq
		select {
		case <-ctx.Done():
			return
		case first = <-a.in:
		}
		batch := []*acceptReq{first}
		size := len(first.msg.Body)
	drain:
		for len(batch) < maxBatchRows && size < maxBatchBytes {
			select {
			case r := <-a.in:
				batch = append(batch, r)
				size += len(r.msg.Body)
			default:
				break drain
			}
		}
		a.commit(ctx, batch)
	}
}

// commit stores batch in one transaction fenced by the shard claim and
// answers every request in it.
func (a *acceptor) commit(ctx context.Context, batch []*acceptReq) {
	start := time.Now()
	st := a.c.holder.status()
	if !st.Primary {
		for _, r := range batch {
			r.done <- acceptResult{code: apierror.NotPrimaryCoreapp, details: "this coreapp is not the primary of any shard"}
		}
		return
	}
	qctx, cancel := context.WithTimeout(ctx, acceptTimeout)
	defer cancel()
	results, err := a.insert(qctx, st, batch)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1062 || errors.Is(err, errShardsChanged) {
		// Another flusher committed the same idempotency key meanwhile
		// (the lookup finds it this time), or a re-shard committed during
		// the transaction (recipients are checked under the new count).
		results, err = a.insert(qctx, st, batch)
	}
	if err != nil {
		code, details := apierror.ServiceUnavailable, "could not store the message; retry with the same "+IdempotencyHeader
		if errors.Is(err, errFenced) {
			code, details = apierror.NotPrimaryCoreapp, "this coreapp no longer holds the shard"
		} else {
			a.c.dbError("accept messages", err)
		}
		for _, r := range batch {
			r.done <- acceptResult{code: code, details: details}
		}
		return
	}
	for i, r := range batch {
		r.done <- results[i]
	}
	a.c.metrics.acceptBatch.Observe(float64(len(batch)))
	a.c.metrics.acceptCommit.Observe(time.Since(start).Seconds())
	a.c.outbox.nudge()
}

var (
	errFenced        = errors.New("shard claim not held in the database")
	errShardsChanged = errors.New("the shard count changed during the transaction")
)

// fence proves, inside tx, that this coreapp still holds st's claim on the
// database's clock, and keeps it so until commit: a promotion must update
// the shard_map row and waits for the shared lock. It returns the shard count.
// Call it as late as possible: the locks last until COMMIT.
func (c *Coreapp) fence(ctx context.Context, tx *sql.Tx, st status) (shards int, err error) {
	// The join share-locks the cluster row as well: a change of the shard
	// count (which locks it for update) waits for this commit, and this one
	// checks recipients under the count it read.
	err = tx.QueryRowContext(ctx, `SELECT c.shards FROM shard_map s JOIN cluster c ON c.id = 1
		WHERE s.shard_id = ? AND s.node_id = ? AND s.incarnation = ? AND s.epoch = ? AND s.lease_expires > NOW(6)
		AND s.shard_id < c.shards LOCK IN SHARE MODE`, st.Shard, c.id.ID, c.id.Incarnation, st.Epoch).Scan(&shards)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, errFenced
	}
	if err != nil {
		return 0, fmt.Errorf("fence shard %d: %w", st.Shard, err)
	}
	return shards, nil
}

func (a *acceptor) insert(ctx context.Context, st status, batch []*acceptReq) ([]acceptResult, error) {
	tx, err := a.c.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// The shard count is read without a lock here; the fence, the last
	// statement before COMMIT, reads it again under its shared lock and the
	// batch is redone if a re-shard changed it. Fencing last holds the
	// shared locks on the shard_map and cluster rows for one round trip
	// instead of the whole transaction, so the claim renewal (which updates
	// that row) and a promotion never wait longer than that for a group
	// commit, however slow the database.
	var shards int
	if err := tx.QueryRowContext(ctx, `SELECT shards FROM cluster WHERE id = 1`).Scan(&shards); err != nil {
		return nil, fmt.Errorf("read the shard count: %w", err)
	}
	results := make([]acceptResult, len(batch))
	// Keys already used (same user, recipient and key): in the database,
	// or earlier in this batch.
	type used struct {
		id, bodyHash string
		unsent       bool // found in the database, not yet sent
	}
	known := map[string]used{}
	var scopes []any
	for _, r := range batch {
		if r.scope != "" {
			scopes = append(scopes, r.scope)
		}
	}
	if len(scopes) > 0 {
		q := `SELECT idem_scope, id, body_hash, state = 0 FROM messages WHERE idem_scope IN (?` + strings.Repeat(",?", len(scopes)-1) + `)`
		rows, err := tx.QueryContext(ctx, q, scopes...)
		if err != nil {
			return nil, fmt.Errorf("look up idempotency keys: %w", err)
		}
		for rows.Next() {
			var scope string
			var u used
			if err := rows.Scan(&scope, &u.id, &u.bodyHash, &u.unsent); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up idempotency keys: %w", err)
			}
			known[scope] = u
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up idempotency keys: %w", err)
		}
	}
	var found []any // ids of unsent rows this batch answers with
	var sb strings.Builder
	args := make([]any, 0, len(batch)*7)
	sb.WriteString(`INSERT INTO messages (id, shard_id, recipient, type, body, idem_scope, body_hash, accepted_at) VALUES `)
	n := 0
	for i, r := range batch {
		s, err := shard.For(r.msg.To, shards)
		if err != nil || s != st.Shard {
			results[i] = acceptResult{code: apierror.NotPrimaryCoreapp, details: fmt.Sprintf("recipient is not on shard %d, which this coreapp serves", st.Shard)}
			continue
		}
		bodyHash := hex.EncodeToString(r.msg.BodyHash[:])
		if r.scope != "" {
			if u, ok := known[r.scope]; ok {
				if u.bodyHash == bodyHash {
					results[i] = acceptResult{id: u.id}
					if u.unsent {
						found = append(found, u.id)
					}
				} else {
					results[i] = keyReused(u.id)
				}
				continue
			}
		}
		id := newMessageID()
		results[i] = acceptResult{id: id}
		var scope, hash any
		if r.scope != "" {
			known[r.scope] = used{id: id, bodyHash: bodyHash}
			scope, hash = r.scope, bodyHash
		}
		if n > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,?,?,?,?,?,NOW(6))`)
		args = append(args, id, st.Shard, r.msg.To, r.msg.Type, r.msg.Body, scope, hash)
		n++
	}
	if n > 0 {
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return nil, fmt.Errorf("insert %d messages: %w", n, err)
		}
	} else if len(found) > 0 {
		// A retry answered with a row another transaction committed: InnoDB
		// shows a commit before its redo log is on disk, and a crash then
		// would take the row back after this 201. A transaction that
		// changes nothing logs nothing and its COMMIT waits for no flush;
		// one that changes a row waits until the log is flushed past it,
		// and so past the row found. (With rows inserted, those do it; a
		// row already sent is durable: the outbox sends only durable rows.)
		// The stamp is the outbox's (see outbox.durable).
		if _, err := tx.ExecContext(ctx, `UPDATE messages SET sent_at = NOW(6) WHERE state = 0 AND id IN (?`+strings.Repeat(",?", len(found)-1)+`)`, found...); err != nil {
			return nil, fmt.Errorf("make %d found messages durable: %w", len(found), err)
		}
	}
	held, err := a.c.fence(ctx, tx, st)
	if err != nil {
		return nil, err
	}
	if held != shards {
		return nil, errShardsChanged
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit %d messages: %w", n, err)
	}
	return results, nil
}

// newMessageID returns an id shaped like the original's ("gBEG" and
// base64): 128 random bits, so ids are unique network-wide without
// coordination.
func newMessageID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error()) // cannot happen on Linux
	}
	return "gBEG" + base64.RawURLEncoding.EncodeToString(b[:])
}
