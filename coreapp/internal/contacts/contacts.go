// Package contacts answers POST /v1/contacts: whether numbers are on the
// network, asked through the transport plugin and cached in MySQL for a
// week, as the original did.
//
// It depends on Deps: the database, the plugin supervisor and the log.
package contacts

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

const (
	// contactTTL is how long a check result is reused, as in the original.
	contactTTL        = 7 * 24 * time.Hour
	contactTimeout    = 10 * time.Second
	contactProcessing = "processing"
	contactFailed     = "failed"
)

// Checker answers /v1/contacts: results come from the network
// through the plugin and are cached in MySQL for contactTTL.
type Checker struct{ Deps }

// New makes the checker.
func New(d Deps) *Checker { return &Checker{Deps: d} }

type contactAnswer struct {
	Input  string `json:"input"`
	Status string `json:"status"`
	WAID   string `json:"wa_id,omitempty"`
}

// Serve serves POST /v1/contacts.
func (k *Checker) Serve(ctx *fasthttp.RequestCtx) {
	// The document's ContactsRequest says what is required and allowed
	// (1008 missing, 1009 invalid, 1025 not JSON).
	body := ctx.PostBody()
	if inv := openapi.Validate("ContactsRequest", body); inv != nil {
		reply.Error(ctx, inv.Code, inv.Details)
		return
	}
	var req struct {
		Blocking   string   `json:"blocking"`
		Contacts   []string `json:"contacts"`
		ForceCheck *bool    `json:"force_check"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		reply.Error(ctx, apierror.RequestNotValid, "the request body is not a valid JSON object: "+err.Error())
		return
	}
	inputs, wait := req.Contacts, req.Blocking == "wait"
	force := req.ForceCheck != nil && *req.ForceCheck
	answers, err := k.check(ctx, inputs, wait, force)
	if err != nil {
		k.DBError("check contacts", err)
		reply.Error(ctx, apierror.ServiceUnavailable, "could not check contacts")
		return
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"contacts": answers})
}

// check answers from the cache, asks the network for the rest (waiting for
// it when wait, else answering processing and asking in the background).
func (k *Checker) check(ctx context.Context, inputs []string, wait, force bool) ([]contactAnswer, error) {
	answers := make([]contactAnswer, len(inputs))
	var ask []string // digits to ask the network about
	askSet := map[string]bool{}
	cached := map[string]contactAnswer{}
	var keys []any
	for i, in := range inputs {
		d := string(shard.Digits(in))
		answers[i] = contactAnswer{Input: in, Status: transport.ContactInvalid}
		if d == "" || len(d) > 64 {
			continue
		}
		keys = append(keys, d)
	}
	if len(keys) > 0 && !force {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		rs, err := k.DB.QueryContext(qctx, `SELECT input_digits, status, COALESCE(wa_id, '') FROM contacts
			WHERE checked_at > NOW(6) - INTERVAL ? SECOND AND input_digits IN (?`+strings.Repeat(",?", len(keys)-1)+`)`,
			append([]any{int64(contactTTL.Seconds())}, keys...)...)
		if err != nil {
			return nil, err
		}
		for rs.Next() {
			var d string
			var a contactAnswer
			if err := rs.Scan(&d, &a.Status, &a.WAID); err != nil {
				rs.Close()
				return nil, err
			}
			cached[d] = a
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return nil, err
		}
	}
	for _, key := range keys {
		d := key.(string)
		if _, ok := cached[d]; !ok && !askSet[d] {
			askSet[d] = true
			ask = append(ask, d)
		}
	}
	var fresh map[string]contactAnswer
	if len(ask) > 0 {
		if wait {
			fresh = k.ask(ctx, ask)
		} else {
			go k.ask(context.Background(), ask)
		}
	}
	for i, in := range inputs {
		d := string(shard.Digits(in))
		if d == "" || len(d) > 64 {
			continue
		}
		a, ok := cached[d]
		if !ok {
			a, ok = fresh[d]
		}
		if !ok {
			a.Status = contactProcessing
		}
		answers[i] = contactAnswer{Input: in, Status: a.Status, WAID: a.WAID}
		if a.Status != transport.ContactValid {
			answers[i].WAID = ""
		}
	}
	return answers, nil
}

// ask checks digits with the network and caches the verdicts; a check the
// network could not answer is "failed" and not cached.
func (k *Checker) ask(ctx context.Context, digits []string) map[string]contactAnswer {
	out := map[string]contactAnswer{}
	ctx, cancel := context.WithTimeout(ctx, contactTimeout)
	defer cancel()
	var res []transport.ContactResult
	err := transport.ErrNotRunning
	k.Plugins.With(func(t transport.Transport, _ uint64) { res, err = t.CheckContacts(ctx, digits) })
	if err != nil {
		k.Log.Warn("contact check failed", "contacts", len(digits), "err", err)
		for _, d := range digits {
			out[d] = contactAnswer{Status: contactFailed}
		}
		return out
	}
	var sb strings.Builder
	args := make([]any, 0, len(res)*3)
	sb.WriteString(`INSERT INTO contacts (input_digits, status, wa_id, checked_at) VALUES `)
	for i, r := range res {
		out[digits[i]] = contactAnswer{Status: r.Status, WAID: r.WAID}
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,?,NOW(6))`)
		args = append(args, digits[i], r.Status, r.WAID)
	}
	sb.WriteString(` ON DUPLICATE KEY UPDATE status = VALUES(status), wa_id = VALUES(wa_id), checked_at = VALUES(checked_at)`)
	if _, err := k.DB.ExecContext(ctx, sb.String(), args...); err != nil {
		k.DBError("cache contacts", err)
	}
	return out
}
