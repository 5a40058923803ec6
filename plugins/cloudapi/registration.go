package cloudapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"

	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Registration on the Cloud API. The On-Premises flow is POST /v1/account
// (RequestCode), then POST /v1/account/verify (VerifyCode). The Cloud API's
// is request_code, verify_code, then register, which sets the number's
// two-step PIN and makes it able to send; so:
//
//   - RequestCode reads the number (GET /{phone-number-id}): its digits
//     must be cc+phone (the transport sends for one number, its
//     MC_CLOUDAPI_PHONE_NUMBER_ID), its verified_name is the vname. A
//     number already verified needs no code: it is registered at once and
//     answered AlreadyRegistered (the original's 201). Otherwise
//     POST /request_code (code_method SMS or VOICE).
//   - VerifyCode is POST /verify_code, then POST /register with the PIN.
//
// The PIN is the `pin` of POST /v1/account, else the account's stored
// two-step PIN (the settings row account.two_step, which POST
// /v1/settings/account/two-step writes). Without either, RequestCode
// refuses before any code is sent: /register cannot go without one. The
// certificate of the original is not needed (the Cloud API knows the
// number by its id); it is ignored.

// registrationLanguage is the language of the code's SMS or call: the
// original's API has no such parameter.
const registrationLanguage = "en_US"

// rowTwoStep is the settings row of the account's two-step PIN (the
// master's, master/account.go).
const rowTwoStep = "account.two_step"

var pinRE = regexp.MustCompile(`^[0-9]{6}$`)

// phoneNumberInfo is the part of Meta's PhoneNumberInfo registration reads.
type phoneNumberInfo struct {
	DisplayPhoneNumber     string `json:"display_phone_number"`
	VerifiedName           string `json:"verified_name"`
	CodeVerificationStatus string `json:"code_verification_status"`
}

// requestCode implements Transport.RequestCode.
func (o *operations) requestCode(ctx context.Context, req transport.RegistrationRequest) (transport.RegistrationResult, error) {
	const op = "request code"
	var info phoneNumberInfo
	if err := o.do(ctx, op, graph.Sender{}, http.MethodGet,
		"/"+o.g.PhoneNumberID()+"?fields=display_phone_number,verified_name,code_verification_status", nil, &info); err != nil {
		return transport.RegistrationResult{}, err
	}
	if got, want := string(shard.Digits(info.DisplayPhoneNumber)), req.CC+req.Phone; got != want {
		return transport.RegistrationResult{}, fmt.Errorf("%s: %w: this transport sends for phone number id %s, which is +%s, not +%s (MC_CLOUDAPI_PHONE_NUMBER_ID)",
			op, transport.ErrInvalidValue, o.g.PhoneNumberID(), got, want)
	}
	res := transport.RegistrationResult{VName: info.VerifiedName}
	pin, err := o.pin(ctx, req.Pin, "")
	if err != nil {
		return res, fmt.Errorf("%s: %w", op, err)
	}
	key := req.CC + req.Phone
	if info.CodeVerificationStatus == "VERIFIED" {
		if err := o.register(ctx, pin); err != nil {
			return res, err
		}
		res.AlreadyRegistered = true
		return res, nil
	}
	method := "SMS"
	if req.Method == transport.MethodVoice {
		method = "VOICE"
	}
	if err := o.do(ctx, op, graph.Sender{}, http.MethodPost, "/"+o.g.PhoneNumberID()+"/request_code",
		map[string]string{"code_method": method, "language": registrationLanguage}, nil); err != nil {
		return res, err
	}
	o.mu.Lock()
	o.pins[key] = pin
	o.mu.Unlock()
	return res, nil
}

// verifyCode implements Transport.VerifyCode.
func (o *operations) verifyCode(ctx context.Context, req transport.VerifyRequest) error {
	const op = "verify code"
	o.mu.Lock()
	given := o.pins[req.CC+req.Phone]
	o.mu.Unlock()
	// The PIN first: a code verified and then not registered is used up.
	pin, err := o.pin(ctx, given, " (again, and verify the new code)")
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = o.do(ctx, op, graph.Sender{}, http.MethodPost, "/"+o.g.PhoneNumberID()+"/verify_code", map[string]string{"code": req.Code}, nil)
	var ge *graphapi.Error
	if errors.As(err, &ge) && (ge.Code == graphapi.CodeInvalidParameter || ge.Code == codeCodeNotVerified) {
		// The Cloud API tells neither a wrong code from an expired one nor
		// from none requested: all are a wrong code to the API.
		return fmt.Errorf("%s: %w: %s (Graph code %d)", op, transport.ErrBadCode, ge.Message, ge.Code) // not ErrInvalidValue
	}
	if err != nil {
		return err
	}
	if err := o.register(ctx, pin); err != nil {
		return fmt.Errorf("the code was verified, but registering the number failed (POST /v1/account again registers it; no code is sent): %w", err)
	}
	o.mu.Lock()
	delete(o.pins, req.CC+req.Phone)
	o.mu.Unlock()
	return nil
}

// Registration's Graph codes (Meta's error reference).
const (
	codeCodeNotVerified = 136025 // "Code couldn't be verified"
	codePinMismatch     = 133005 // "Two step verification PIN mismatch"
)

// register is POST /{phone-number-id}/register with the two-step PIN.
func (o *operations) register(ctx context.Context, pin string) error {
	const op = "register"
	err := o.do(ctx, op, graph.Sender{}, http.MethodPost, "/"+o.g.PhoneNumberID()+"/register",
		map[string]string{"messaging_product": messagingProduct, "pin": pin}, nil)
	var ge *graphapi.Error
	if errors.As(err, &ge) && ge.Code == codePinMismatch {
		return fmt.Errorf("%s: %w: the number has two-step verification with another PIN (Graph code %d)", op, transport.ErrInvalidValue, ge.Code)
	}
	return err
}

// pin is the PIN registration uses: given (the request's), else the
// stored two-step PIN. how says how to give one, in the error.
func (o *operations) pin(ctx context.Context, given, how string) (string, error) {
	if given != "" {
		if !pinRE.MatchString(given) {
			return "", fmt.Errorf("%w: pin: not 6 digits", transport.ErrInvalidValue)
		}
		return given, nil
	}
	if o.db != nil {
		var ts struct {
			Pin string `json:"pin"`
		}
		var raw string
		err := o.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = ?`, rowTwoStep).Scan(&raw)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return "", fmt.Errorf("read the stored two-step PIN: %w", err)
		default:
			if json.Unmarshal([]byte(raw), &ts) == nil && pinRE.MatchString(ts.Pin) {
				return ts.Pin, nil
			}
		}
	}
	return "", fmt.Errorf("%w: pin: the Cloud API registers a number with its two-step PIN (POST /{phone-number-id}/register): "+
		"give pin in POST /v1/account%s, or set one with POST /v1/settings/account/two-step", transport.ErrInvalidValue, how)
}
