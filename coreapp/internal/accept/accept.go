// Package accept is the message path's first stage: it serves POST
// /v1/messages, validates the message against the OpenAPI schema, fetches
// media named by a provider, and commits concurrent requests in few fenced
// group commits before answering 201; it then hands the committed rows to
// the outbox.
//
// It depends on Deps: the database, the claim (Status and Fence), the
// outbox (Handover, Rescan), the media store (CheckIDs, Save) and the
// request slots.
package accept

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
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
)

// acceptReq is one message waiting for a group commit.
type acceptReq struct {
	msg      *outMessage
	scope    string // idemScope of the idempotency key, "" when none
	bodyHash string // msg.bodyHash(), with a key only
	done     chan acceptResult
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

// Acceptor collects concurrent accept requests and commits them in few
// transactions: one group commit in flight per coreapp, and whatever
// queued up meanwhile goes into the next one, as MariaDB's own group
// commit gathers the next group while one is flushed (no timer: an idle
// coreapp commits at once, a busy one batches more the busier it is).
// Several commits in flight at once (there were three) took each what
// waited the moment the previous one started, so under load they split
// the queue into small groups, each paying its statement and its fsync;
// the database is kept busy by the other shards' coreapps instead. Order
// is safe: a request sent after another's 201 is inserted after that one
// committed, so it gets a higher seq; requests in flight together were
// never ordered.
type Acceptor struct {
	Deps
	in chan *acceptReq
	// shards is the shard count the last fence read under its lock (0
	// before the first): recipients are checked against it, so a group
	// commit does not read the count again unlocked. The fence re-reads it
	// and a batch checked under a stale count is redone.
	shards atomic.Int64

	providers *providerCache
}

// New makes the acceptor; Run starts its group commits.
func New(d Deps) *Acceptor {
	return &Acceptor{Deps: d, in: make(chan *acceptReq, 8192), providers: newProviderCache(d.DB, d.Settings)}
}

// Serve serves POST /v1/messages.
func (a *Acceptor) Serve(ctx *fasthttp.RequestCtx) {
	if !a.Claim.Status().Primary {
		reply.Error(ctx, apierror.NotPrimaryCoreapp, "this coreapp is not the primary of any shard")
		return
	}
	msg, bad := parseMessage(ctx.PostBody())
	if bad != nil {
		reply.Error(ctx, bad.code, bad.details)
		return
	}
	key := strings.TrimSpace(string(ctx.Request.Header.Peek(IdempotencyHeader)))
	if len(key) > maxIdemKey {
		reply.Error(ctx, apierror.ParameterInvalid, fmt.Sprintf("%s is longer than %d characters", IdempotencyHeader, maxIdemKey))
		return
	}
	if code, details := a.providerMedia(ctx, msg); code != 0 {
		reply.Error(ctx, code, details)
		return
	}
	if len(msg.MediaIDs) > 0 {
		if !a.Slots.Acquire(ctx) {
			return
		}
		code, details := a.Media.CheckIDs(ctx, msg.MediaIDs)
		a.Slots.Release()
		if code != 0 {
			reply.Error(ctx, code, details)
			return
		}
	}
	req := &acceptReq{msg: msg, done: make(chan acceptResult, 1)}
	if key != "" {
		// The user header is believed: the request carried the cluster
		// secret, and the gateway sets the header after dropping a client's.
		req.scope = idemScope(string(ctx.Request.Header.Peek(cluster.UserHeader)), msg.To, key)
		var err error
		if req.bodyHash, err = msg.bodyHash(); err != nil {
			reply.Error(ctx, apierror.RequestNotValid, "the request body is not valid JSON")
			return
		}
	}
	timer := time.NewTimer(acceptTimeout)
	defer timer.Stop()
	select {
	case a.in <- req:
	case <-timer.C:
		reply.Error(ctx, apierror.ServiceUnavailable, "too busy to accept the message; retry with the same "+IdempotencyHeader)
		return
	}
	select {
	case r := <-req.done:
		if r.code != 0 {
			reply.Error(ctx, r.code, r.details)
			if r.status != 0 {
				ctx.SetStatusCode(r.status)
			}
			return
		}
		a.Metrics.Accepted.Inc()
		ctx.SetContentType("application/json")
		ctx.SetStatusCode(fasthttp.StatusCreated)
		ctx.SetBodyString(`{"messages":[{"id":"` + r.id + `"}]}`)
	case <-timer.C:
		reply.Error(ctx, apierror.ServiceUnavailable, "the database did not confirm in time; the message may be stored: retry with the same "+IdempotencyHeader)
	}
}

// Run commits what Serve queues, one group commit at a time, until ctx
// ends.
func (a *Acceptor) Run(ctx context.Context) {
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
func (a *Acceptor) commit(ctx context.Context, batch []*acceptReq) {
	start := time.Now()
	st := a.Claim.Status()
	if !st.Primary {
		for _, r := range batch {
			r.done <- acceptResult{code: apierror.NotPrimaryCoreapp, details: "this coreapp is not the primary of any shard"}
		}
		return
	}
	qctx, cancel := context.WithTimeout(ctx, acceptTimeout)
	defer cancel()
	results, rows, err := a.insert(qctx, st, batch)
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1062 || me.Number == 1213) || errors.Is(err, errShardsChanged) {
		// Another coreapp committed the same idempotency key meanwhile
		// (a previous primary of the shard, its commit in flight at the
		// hand-over; the lookup finds it this time), or a re-shard
		// committed during the transaction (recipients are checked under
		// the new count), or InnoDB ended the commit to break a deadlock
		// (it rolled the whole commit back; the fences take their locks in
		// the re-shard's order so that one cannot happen, but a deadlock
		// is for the loser to retry, not for its clients).
		results, rows, err = a.insert(qctx, st, batch)
	}
	if err != nil {
		code, details := apierror.ServiceUnavailable, "could not store the message; retry with the same "+IdempotencyHeader
		if errors.Is(err, claim.ErrFenced) {
			code, details = apierror.NotPrimaryCoreapp, "this coreapp no longer holds the shard"
		} else {
			a.DBError("accept messages", err)
		}
		for _, r := range batch {
			r.done <- acceptResult{code: code, details: details}
		}
		return
	}
	// The outbox gets the rows before any request is answered: a message
	// sent after another's 201 is handed over after it, so the outbox's
	// order keeps every recipient's order.
	a.Outbox.Handover(st, rows)
	for i, r := range batch {
		r.done <- results[i]
	}
	a.Metrics.AcceptBatch.Observe(float64(len(batch)))
	a.Metrics.AcceptCommit.Observe(time.Since(start).Seconds())
}

// errShardsChanged: a re-shard committed during the transaction.
var errShardsChanged = errors.New("the shard count changed during the transaction")

// insertFenced stores a batch that carries no idempotency key in one
// autocommit statement that is its own fence: INSERT ... SELECT of the
// batch joined with this coreapp's shard_map row and the cluster row,
// LOCK IN SHARE MODE, so the rows are stored only if this coreapp is still
// the shard's holder at st's epoch (see fence for why not its expiry too)
// and the shard count is the one the recipients were
// checked against, and a promotion (which updates the shard_map row) waits
// for this commit as it waits for a fenced transaction's. One statement
// instead of BEGIN, INSERT, fence and COMMIT. (Under REPEATABLE READ an
// INSERT ... SELECT share-locks the rows it reads anyway; the clause says
// so, and holds under READ COMMITTED too.) stored is false when it
// stored nothing (claim not held, shard count changed, no recipient on
// this shard): the transaction of insert then tells which.
func (a *Acceptor) insertFenced(ctx context.Context, st claim.Status, batch []*acceptReq, shards int) (results []acceptResult, rows []outbox.Row, stored bool, err error) {
	results = make([]acceptResult, len(batch))
	rows = make([]outbox.Row, 0, len(batch))
	// The cluster row first, then the shard_map row: the order a re-shard
	// locks them in (cluster for update, then the removed shards' rows).
	// MariaDB reads these one-row tables in the order they are written
	// while it plans the statement; the other order let a shrink and a
	// group commit of a removed shard deadlock (1213), and the commit's
	// clients got 1011 instead of 1018
	// (TestShrinkDuringAGroupCommitAnswers1018).
	args := make([]any, 0, len(batch)*5+6)
	args = append(args, shards, st.Shard, a.ID.ID, a.ID.Incarnation, st.Epoch)
	var sb strings.Builder
	sb.WriteString(`INSERT INTO messages (id, shard_id, recipient, type, body, accepted_at)
		SELECT v.id, v.shard_id, v.recipient, v.type, v.body, NOW(6)
		FROM cluster c
		JOIN shard_map s ON c.id = 1 AND c.shards = ? AND s.shard_id = ? AND s.node_id = ? AND s.incarnation = ? AND s.epoch = ?
			AND s.shard_id < c.shards
		JOIN (`)
	for i, r := range batch {
		if s, err := shard.For(r.msg.To, shards); err != nil || s != st.Shard {
			results[i] = notOnShard(st)
			continue
		}
		id := newMessageID()
		results[i] = acceptResult{id: id}
		if len(rows) == 0 {
			sb.WriteString(`SELECT ? AS id, ? AS shard_id, ? AS recipient, ? AS type, ? AS body`)
		} else {
			sb.WriteString(` UNION ALL SELECT ?,?,?,?,?`)
		}
		args = append(args, id, st.Shard, r.msg.To, r.msg.Type, r.msg.Body)
		rows = append(rows, outbox.NewRow(id, r.msg.To, r.msg.Type, r.msg.Body))
	}
	if len(rows) == 0 {
		return nil, nil, false, nil
	}
	sb.WriteString(`) v
		LOCK IN SHARE MODE`)
	res, err := a.DB.ExecContext(ctx, sb.String(), args...)
	if err != nil {
		// The commit may have happened all the same (a lost answer):
		// the outbox finds such rows in the database.
		a.Outbox.Rescan()
		return nil, nil, false, fmt.Errorf("insert %d messages: %w", len(rows), err)
	}
	n, err := res.RowsAffected()
	if err != nil || n != int64(len(rows)) && n != 0 {
		a.Outbox.Rescan()
		return nil, nil, false, fmt.Errorf("insert %d messages: %d rows stored (%v)", len(rows), n, err)
	}
	return results, rows, n > 0, nil
}

// insert stores batch: in one statement (insertFenced) when no request
// carries an idempotency key and the shard count is known, else in one
// transaction fenced last. It returns each request's result and the rows
// it committed, for the outbox.
func (a *Acceptor) insert(ctx context.Context, st claim.Status, batch []*acceptReq) ([]acceptResult, []outbox.Row, error) {
	shards := int(a.shards.Load())
	if shards > 0 && !slices.ContainsFunc(batch, func(r *acceptReq) bool { return r.scope != "" }) {
		results, rows, stored, err := a.insertFenced(ctx, st, batch, shards)
		if err != nil || stored {
			return results, rows, err
		}
		// Nothing stored: the transaction below tells why (the claim
		// lost, the shard count changed) or stores nothing as well.
	}
	tx, err := a.DB.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	defer tx.Rollback()
	// The shard count is the one the previous fence read (read here, without
	// a lock, only the first time); the fence, the last statement before
	// COMMIT, reads it again under its shared lock and the batch is redone
	// if a re-shard changed it. Fencing last holds the
	// shared locks on the shard_map and cluster rows for one round trip
	// instead of the whole transaction, so the claim renewal (which updates
	// that row) and a promotion never wait longer than that for a group
	// commit, however slow the database.
	if shards == 0 {
		if err := tx.QueryRowContext(ctx, `SELECT shards FROM cluster WHERE id = 1`).Scan(&shards); err != nil {
			return nil, nil, fmt.Errorf("read the shard count: %w", err)
		}
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
			return nil, nil, fmt.Errorf("look up idempotency keys: %w", err)
		}
		for rows.Next() {
			var scope string
			var u used
			if err := rows.Scan(&scope, &u.id, &u.bodyHash, &u.unsent); err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("look up idempotency keys: %w", err)
			}
			known[scope] = u
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, fmt.Errorf("look up idempotency keys: %w", err)
		}
	}
	var found []any // ids of unsent rows this batch answers with
	var sb strings.Builder
	args := make([]any, 0, len(batch)*7)
	rows := make([]outbox.Row, 0, len(batch))
	sb.WriteString(`INSERT INTO messages (id, shard_id, recipient, type, body, idem_scope, body_hash, accepted_at) VALUES `)
	n := 0
	for i, r := range batch {
		s, err := shard.For(r.msg.To, shards)
		if err != nil || s != st.Shard {
			results[i] = notOnShard(st)
			continue
		}
		if r.scope != "" {
			if u, ok := known[r.scope]; ok {
				if u.bodyHash == r.bodyHash {
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
			known[r.scope] = used{id: id, bodyHash: r.bodyHash}
			scope, hash = r.scope, r.bodyHash
		}
		if n > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,?,?,?,?,?,NOW(6))`)
		args = append(args, id, st.Shard, r.msg.To, r.msg.Type, r.msg.Body, scope, hash)
		rows = append(rows, outbox.NewRow(id, r.msg.To, r.msg.Type, r.msg.Body))
		n++
	}
	if n > 0 {
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return nil, nil, fmt.Errorf("insert %d messages: %w", n, err)
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
			return nil, nil, fmt.Errorf("make %d found messages durable: %w", len(found), err)
		}
	}
	held, err := a.Claim.Fence(ctx, tx, st)
	if err != nil {
		return nil, nil, err
	}
	a.shards.Store(int64(held))
	if held != shards {
		return nil, nil, errShardsChanged
	}
	if err := tx.Commit(); err != nil {
		// The rows may have been committed all the same: the outbox
		// finds them in the database.
		a.Outbox.Rescan()
		return nil, nil, fmt.Errorf("commit %d messages: %w", n, err)
	}
	return results, rows, nil
}

func notOnShard(st claim.Status) acceptResult {
	return acceptResult{code: apierror.NotPrimaryCoreapp, details: fmt.Sprintf("recipient is not on shard %d, which this coreapp serves", st.Shard)}
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
