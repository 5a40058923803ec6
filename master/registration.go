package main

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Registration is the primary master's (as in the original): POST
// /v1/account asks the messaging network, through the transport plugin, to
// send a code by SMS or voice call and records a pending registration;
// POST /v1/account/verify checks the code with the network and records the
// account as registered. The network is asked before the database is
// written, so a request the network refuses stores nothing; a code the
// network accepted but whose record failed (say, the lease was lost) is
// recovered by requesting again: the network then answers "already
// registered" for the same certificate and the record is written. Such a
// failure is answered 1000, never 1017 (see recordFailed).

// Account states in the account table.
const (
	statePending    = "pending"
	stateRegistered = "registered"
	stateSuperseded = "superseded"
)

// networkTimeout bounds one registration call to the network.
const networkTimeout = 15 * time.Second

// accountRequest is a validated POST /v1/account body.
type accountRequest struct {
	CC, Phone, Method string
	Cert              []byte // decoded from base64
	Pin               string
}

// waID is the account id the original shows in the settings: the country
// code followed by the number.
func waID(cc, phone string) string { return cc + phone }

// inputError is a client error in the original's shape.
type inputError struct {
	code   int
	detail string
}

func (e *inputError) Error() string { return e.detail }

func invalid(format string, args ...any) error {
	return &inputError{apierror.ParameterInvalid, fmt.Sprintf(format, args...)}
}

// jsonFields decodes a JSON object's fields.
func jsonFields(body []byte) (map[string]json.RawMessage, error) {
	var f map[string]json.RawMessage
	if err := json.Unmarshal(body, &f); err != nil || f == nil {
		return nil, &inputError{apierror.RequestNotValid, "the body must be a JSON object"}
	}
	return f, nil
}

// parseAccountRequest validates a POST /v1/account body against the
// document's AccountRequest: every missing field is reported (1008) before
// any bad value (1009). What the schema cannot say is checked here: the
// number's total length and the certificate's base64.
func parseAccountRequest(body []byte) (accountRequest, error) {
	var a accountRequest
	var req struct {
		CC     string `json:"cc"`
		Phone  string `json:"phone_number"`
		Method string `json:"method"`
		Cert   string `json:"cert"`
		Pin    string `json:"pin"`
	}
	if err := decodeBySchema(body, "AccountRequest", &req); err != nil {
		return a, err
	}
	a.CC, a.Phone, a.Method, a.Pin = req.CC, req.Phone, req.Method, req.Pin
	if len(a.CC)+len(a.Phone) > 15 {
		return a, invalid("cc and phone_number together have %d digits; a phone number has at most 15", len(a.CC)+len(a.Phone))
	}
	var err error
	if a.Cert, err = base64.StdEncoding.DecodeString(req.Cert); err != nil || len(a.Cert) == 0 {
		return a, invalid("cert must be the base64 certificate from the business's account")
	}
	return a, nil
}

// parseVerifyRequest validates a POST /v1/account/verify body against the
// document's VerifyRequest.
func parseVerifyRequest(body []byte) (string, error) {
	var req struct {
		Code string `json:"code"`
	}
	if err := decodeBySchema(body, "VerifyRequest", &req); err != nil {
		return "", err
	}
	return req.Code, nil
}

// decodeBySchema decodes a JSON object body into v once it passes
// components.schemas[schema]. An empty string or null counts as absent, as
// a form field left blank.
func decodeBySchema(body []byte, schema string, v any) error {
	f, err := jsonFields(body)
	if err != nil {
		return err
	}
	for k, raw := range f {
		if string(raw) == "null" || string(raw) == `""` {
			delete(f, k)
		}
	}
	norm, err := json.Marshal(f)
	if err != nil {
		return &inputError{apierror.RequestNotValid, "the body must be a JSON object"}
	}
	if inv := openapi.ValidateMissingFirst(schema, norm); inv != nil {
		return &inputError{inv.Code, inv.Details}
	}
	if err := json.Unmarshal(norm, v); err != nil {
		return &inputError{apierror.RequestNotValid, "the body does not fit this route: " + err.Error()}
	}
	return nil
}

func readBody(r *http.Request) []byte {
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	return b
}

// writeErr answers err: an input error as itself, a lost lease as 1017,
// anything else as a generic error.
func writeErr(w http.ResponseWriter, err error) {
	var ie *inputError
	switch {
	case errors.As(err, &ie):
		apierror.Write(w, ie.code, ie.detail)
	case errors.Is(err, ErrNotPrimary):
		apierror.Write(w, apierror.NotPrimaryMaster, err.Error())
	default:
		apierror.Write(w, apierror.GenericError, err.Error())
	}
}

// recordFailed answers a record that failed after the network acted on
// the request (a code sent, a code used): never 1017, which tells the
// gateway nothing happened and makes it resend the request to the new
// primary master (a second code, or a used code refused with 404). The
// answer is 1000 (HTTP 500), saying what the network did and how to
// record it.
func (m *Master) recordFailed(w http.ResponseWriter, err error, done, recovery string) {
	why := "the record failed"
	if errors.Is(err, ErrNotPrimary) {
		why = "this master lost the master lease before recording it"
	}
	m.log.Warn("the network acted but the record failed", "done", done, "err", err)
	apierror.Write(w, apierror.GenericError, done+", but "+why+" ("+err.Error()+"): "+recovery)
}

// networkUnavailable answers a failure to reach the network through the
// plugin: the request may be retried, nothing was stored.
func networkUnavailable(w http.ResponseWriter, err error) {
	apierror.Write(w, apierror.ServiceUnavailable, "the messaging network did not answer; nothing was stored, try again: "+err.Error())
}

// withTransport calls f with the plugin's Transport, starting the plugin on
// first use and again after it died. A call that failed because the plugin
// died under it is made once more on a new plugin; an answer from the
// network (ErrBadCert, ErrBadCode, ErrNoCode) is final.
func (m *Master) withTransport(ctx context.Context, f func(transport.Transport) error) error {
	if m.pluginErr != nil {
		return m.pluginErr
	}
	for attempt := 0; ; attempt++ {
		t, err := m.plugin.Ensure(ctx)
		if err != nil {
			return err
		}
		err = f(t)
		if err == nil || attempt > 0 || networkAnswer(err) || !m.pluginDied(ctx) {
			return err
		}
		m.log.Warn("transport plugin died during a registration call; retrying on a new one", "err", err)
	}
}

func networkAnswer(err error) bool {
	return errors.Is(err, transport.ErrBadCert) || errors.Is(err, transport.ErrBadCode) || errors.Is(err, transport.ErrNoCode) ||
		errors.Is(err, transport.ErrInvalidValue)
}

// pluginDied reports whether the plugin is seen exited within a moment: a
// call fails as soon as the plugin's socket closes, a little before the
// process is reaped.
func (m *Master) pluginDied(ctx context.Context) bool {
	for i := 0; i < 50; i++ {
		if !m.plugin.Running() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

// register is POST /v1/account.
func (m *Master) register(w http.ResponseWriter, r *http.Request) {
	req, err := parseAccountRequest(readBody(r))
	if err != nil {
		writeErr(w, err)
		return
	}
	ctx := r.Context()
	state, err := m.accountState(ctx, req.CC, req.Phone)
	if err != nil {
		writeErr(w, err)
		return
	}
	if state == stateRegistered {
		w.WriteHeader(http.StatusCreated)
		return
	}
	nctx, cancel := context.WithTimeout(ctx, networkTimeout)
	defer cancel()
	var res transport.RegistrationResult
	err = m.withTransport(nctx, func(t transport.Transport) error {
		var err error
		res, err = t.RequestCode(nctx, transport.RegistrationRequest{CC: req.CC, Phone: req.Phone, Method: req.Method, Cert: req.Cert, Pin: req.Pin})
		return err
	})
	switch {
	case errors.Is(err, transport.ErrBadCert):
		apierror.Write(w, apierror.ParameterInvalid, "cert: the network could not read the certificate: "+err.Error())
		return
	case errors.Is(err, transport.ErrInvalidValue):
		// The network refused a value of the request (the Cloud API: a
		// number that is not the transport's, no two-step PIN).
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
		return
	case err != nil:
		networkUnavailable(w, err)
		return
	}
	err = m.lease.fenced(ctx, func(tx *sql.Tx) error {
		// One registration in progress at a time: the newest request is
		// the one a code verifies.
		if _, err := tx.ExecContext(ctx, `UPDATE account SET state = ? WHERE state = ? AND NOT (cc = ? AND phone_number = ?)`,
			stateSuperseded, statePending, req.CC, req.Phone); err != nil {
			return fmt.Errorf("supersede pending registrations: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO account (cc, phone_number, method, vname, state, requested_at, master_epoch)
			VALUES (?, ?, ?, ?, ?, NOW(6), ?)
			ON DUPLICATE KEY UPDATE method = VALUES(method), vname = VALUES(vname), requested_at = NOW(6),
				state = IF(state = ?, state, VALUES(state)), master_epoch = VALUES(master_epoch)`,
			req.CC, req.Phone, req.Method, res.VName, statePending, m.lease.epoch, stateRegistered); err != nil {
			return fmt.Errorf("record the registration: %w", err)
		}
		if res.AlreadyRegistered {
			return m.markRegistered(ctx, tx, req.CC, req.Phone)
		}
		return nil
	})
	if err != nil {
		if res.AlreadyRegistered {
			m.recordFailed(w, err, "the network has the number registered for this certificate",
				"POST /v1/account again records it (no code is sent)")
		} else {
			m.recordFailed(w, err, "the network is sending a code",
				"POST /v1/account again to record the registration (the network sends a new code; verify with the newest)")
		}
		return
	}
	if res.AlreadyRegistered {
		m.log.Info("account already registered at the network; recorded", "cc", req.CC, "phone_number", req.Phone, "vname", res.VName)
		w.WriteHeader(http.StatusCreated)
		return
	}
	m.log.Info("registration code requested", "cc", req.CC, "phone_number", req.Phone, "method", req.Method, "vname", res.VName)
	writeJSON(w, http.StatusAccepted, map[string]any{"account": []map[string]string{{"vname": res.VName}}})
}

// verify is POST /v1/account/verify.
func (m *Master) verify(w http.ResponseWriter, r *http.Request) {
	code, err := parseVerifyRequest(readBody(r))
	if err != nil {
		writeErr(w, err)
		return
	}
	ctx := r.Context()
	var cc, phone string
	err = m.db.QueryRowContext(ctx, `SELECT cc, phone_number FROM account WHERE state = ? ORDER BY requested_at DESC LIMIT 1`, statePending).Scan(&cc, &phone)
	if errors.Is(err, sql.ErrNoRows) {
		// 1006 rather than 1025: the request is well formed, but what it
		// refers to, a registration in progress, does not exist (the
		// original's "resource not found"); the fix is POST /v1/account.
		apierror.Write(w, apierror.NotFound, "no registration in progress: request a code with POST /v1/account first")
		return
	}
	if err != nil {
		writeErr(w, fmt.Errorf("read the registration in progress: %w", err))
		return
	}
	nctx, cancel := context.WithTimeout(ctx, networkTimeout)
	defer cancel()
	err = m.withTransport(nctx, func(t transport.Transport) error {
		return t.VerifyCode(nctx, transport.VerifyRequest{CC: cc, Phone: phone, Code: code})
	})
	switch {
	case errors.Is(err, transport.ErrBadCode):
		apierror.Write(w, apierror.ParameterInvalid, fmt.Sprintf("code: not the code the network sent to +%s %s", cc, phone))
		return
	case errors.Is(err, transport.ErrNoCode):
		apierror.Write(w, apierror.NotFound, fmt.Sprintf("the network has no code outstanding for +%s %s: request a new one with POST /v1/account", cc, phone))
		return
	case errors.Is(err, transport.ErrInvalidValue):
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
		return
	case err != nil:
		networkUnavailable(w, err)
		return
	}
	if err := m.lease.fenced(ctx, func(tx *sql.Tx) error { return m.markRegistered(ctx, tx, cc, phone) }); err != nil {
		m.recordFailed(w, err, "the network verified the code",
			"POST /v1/account with the same request and certificate records the registration (201; the network sends no new code)")
		return
	}
	m.log.Info("account registered", "cc", cc, "phone_number", phone, "wa_id", waID(cc, phone))
	w.WriteHeader(http.StatusCreated)
}

// markRegistered makes the number's row the one registered account.
func (m *Master) markRegistered(ctx context.Context, tx *sql.Tx, cc, phone string) error {
	if _, err := tx.ExecContext(ctx, `UPDATE account SET state = ? WHERE state = ? AND NOT (cc = ? AND phone_number = ?)`,
		stateSuperseded, stateRegistered, cc, phone); err != nil {
		return fmt.Errorf("supersede the registered account: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE account SET state = ?, wa_id = ?, registered_at = NOW(6), master_epoch = ?
		WHERE cc = ? AND phone_number = ?`, stateRegistered, waID(cc, phone), m.lease.epoch, cc, phone); err != nil {
		return fmt.Errorf("record the registration: %w", err)
	}
	return nil
}

// accountState is the stored state of a number's registration, "" if none.
func (m *Master) accountState(ctx context.Context, cc, phone string) (string, error) {
	var state string
	err := m.db.QueryRowContext(ctx, `SELECT state FROM account WHERE cc = ? AND phone_number = ?`, cc, phone).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the account: %w", err)
	}
	return state, nil
}

// registeredWAID is the registered account's wa_id, "" before registration.
func (m *Master) registeredWAID(ctx context.Context) (string, error) {
	var id string
	err := m.db.QueryRowContext(ctx, `SELECT wa_id FROM account WHERE state = ? ORDER BY registered_at DESC LIMIT 1`, stateRegistered).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the registered account: %w", err)
	}
	return id, nil
}
