package simnet

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Registration is what the network knows about one number's registration.
// The code stands in for the SMS or voice call: the HTTP API lists it
// (GET /v1/registrations) so a test or a person can read it.
//
// The simulated network's certificate convention: a certificate is the
// business's verified name (vname) itself, as UTF-8; the API carries it in
// base64. A real certificate is a signed document the real network decodes.
type Registration struct {
	CC          string `json:"cc"`
	PhoneNumber string `json:"phone_number"`
	Method      string `json:"method"`
	VName       string `json:"vname"`
	// Code is the last code issued; it stays listed after it was used.
	Code string `json:"code"`
	// Verified is true once the code was entered correctly; a new code
	// request (for another certificate) makes it false again.
	Verified bool `json:"verified"`
	// TwoStep says the request carried a two-step verification PIN.
	TwoStep      bool  `json:"two_step"`
	BadAttempts  int   `json:"bad_attempts"` // wrong codes since the code was issued
	Requests     int   `json:"requests"`     // codes requested for the number
	RequestedAt  int64 `json:"requested_at"` // Unix ns of the last code request
	VerifiedAt   int64 `json:"verified_at"`  // Unix ns; 0 until verified
	codePending  bool  // a code was issued and not used yet
	requestOrder int64 // for listing in request order
}

// maxVName bounds the verified name a certificate may carry.
const maxVName = 256

// regKey identifies a number.
func regKey(cc, phone string) string { return cc + " " + phone }

// allDigits reports whether s is non-empty and only ASCII digits.
func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// vnameFromCert reads the verified name from a certificate (see
// Registration for the convention).
func vnameFromCert(cert []byte) (string, error) {
	if !utf8.Valid(cert) {
		return "", fmt.Errorf("the certificate is not a UTF-8 name")
	}
	name := strings.TrimSpace(string(cert))
	switch {
	case name == "":
		return "", fmt.Errorf("the certificate carries no name")
	case len(name) > maxVName:
		return "", fmt.Errorf("the certificate's name is longer than %d bytes", maxVName)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", fmt.Errorf("the certificate's name contains control characters")
	}
	return name, nil
}

// newCode returns a random 6-digit code.
func newCode() (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return "", fmt.Errorf("generate a code: %w", err)
	}
	return fmt.Sprintf("%06d", n.Int64()), nil
}

// RegisterError is the network's refusal of a registration request; Kind
// is one of the Reject* constants.
type RegisterError struct {
	Kind   string
	Reason string
}

func (e *RegisterError) Error() string { return e.Reason }

// RequestCode issues a registration code for r's number, replacing any
// earlier code, and returns the name the certificate carries. When the
// number is already verified for that name it issues none and reports
// registered.
func (s *Server) RequestCode(r RegistrationFrame) (vname string, registered bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requestCodeLocked(r)
}

func (s *Server) requestCodeLocked(r RegistrationFrame) (vname string, registered bool, err error) {
	switch {
	case !allDigits(r.CC) || len(r.CC) > 3:
		return "", false, &RegisterError{RejectInvalid, fmt.Sprintf("cc %q is not 1 to 3 digits", r.CC)}
	case !allDigits(r.PhoneNumber) || len(r.CC)+len(r.PhoneNumber) > 15:
		return "", false, &RegisterError{RejectInvalid, fmt.Sprintf("phone_number %q is not digits of a number of at most 15", r.PhoneNumber)}
	case r.Method != "sms" && r.Method != "voice":
		return "", false, &RegisterError{RejectInvalid, fmt.Sprintf("method %q is not sms or voice", r.Method)}
	}
	vname, err = vnameFromCert(r.Cert)
	if err != nil {
		return "", false, &RegisterError{RejectBadCert, err.Error()}
	}
	code, err := newCode()
	if err != nil {
		return "", false, err
	}
	key := regKey(r.CC, r.PhoneNumber)
	reg := s.registrations[key]
	if reg != nil && reg.Verified && reg.VName == vname {
		return vname, true, nil
	}
	if reg == nil {
		s.nextReg++
		reg = &Registration{CC: r.CC, PhoneNumber: r.PhoneNumber, requestOrder: s.nextReg}
		s.registrations[key] = reg
	}
	reg.Method, reg.VName, reg.Code, reg.TwoStep = r.Method, vname, code, r.Pin != ""
	reg.Verified, reg.VerifiedAt, reg.codePending, reg.BadAttempts = false, 0, true, 0
	reg.Requests++
	reg.RequestedAt = s.unix(s.now())
	s.log.Info("registration code sent", "cc", r.CC, "phone_number", r.PhoneNumber, "method", r.Method, "vname", vname)
	return vname, false, nil
}

// VerifyCode checks code against the one issued for the number; the right
// code verifies the number and is used up.
func (s *Server) VerifyCode(cc, phone, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verifyCodeLocked(cc, phone, code)
}

func (s *Server) verifyCodeLocked(cc, phone, code string) error {
	reg := s.registrations[regKey(cc, phone)]
	if reg == nil || !reg.codePending {
		return &RegisterError{RejectNoCode, fmt.Sprintf("no registration code outstanding for +%s %s", cc, phone)}
	}
	if subtle.ConstantTimeCompare([]byte(code), []byte(reg.Code)) != 1 {
		reg.BadAttempts++
		return &RegisterError{RejectBadCode, fmt.Sprintf("wrong registration code for +%s %s", cc, phone)}
	}
	reg.Verified, reg.codePending, reg.VerifiedAt = true, false, s.unix(s.now())
	s.log.Info("registration verified", "cc", cc, "phone_number", phone, "vname", reg.VName)
	return nil
}

// Registrations returns every number's registration, in the order numbers
// were first requested.
func (s *Server) Registrations() []Registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Registration, 0, len(s.registrations))
	for _, r := range s.registrations {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].requestOrder < out[j].requestOrder })
	return out
}

// registerLocked answers a register frame.
func (s *Server) registerLocked(c *conn, f Frame) {
	if f.Reg == nil {
		c.out.push(Frame{Op: OpRejected, Seq: f.Seq, Error: RejectInvalid, Reason: "register without reg"})
		return
	}
	vname, registered, err := s.requestCodeLocked(*f.Reg)
	if err != nil {
		c.out.push(rejection(f.Seq, err))
		return
	}
	c.out.push(Frame{Op: OpCodeSent, Seq: f.Seq, VName: vname, Registered: registered})
}

// verifyLocked answers a verify frame.
func (s *Server) verifyLocked(c *conn, f Frame) {
	if f.Reg == nil {
		c.out.push(Frame{Op: OpRejected, Seq: f.Seq, Error: RejectInvalid, Reason: "verify without reg"})
		return
	}
	if err := s.verifyCodeLocked(f.Reg.CC, f.Reg.PhoneNumber, f.Reg.Code); err != nil {
		c.out.push(rejection(f.Seq, err))
		return
	}
	c.out.push(Frame{Op: OpVerified, Seq: f.Seq})
}

func rejection(seq uint64, err error) Frame {
	if re, ok := err.(*RegisterError); ok {
		return Frame{Op: OpRejected, Seq: seq, Error: re.Kind, Reason: re.Reason}
	}
	return Frame{Op: OpError, Seq: seq, Reason: err.Error()}
}
