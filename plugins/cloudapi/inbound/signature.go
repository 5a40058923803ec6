package inbound

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
)

// SignatureHeader carries Meta's signature of a webhook's body.
const SignatureHeader = "X-Hub-Signature-256"

// Errors of Verify.
var (
	ErrUnsigned     = errors.New("cloudapi webhook: no " + SignatureHeader + " signature")
	ErrBadSignature = errors.New("cloudapi webhook: " + SignatureHeader + " does not match the body")
)

// Sign returns the X-Hub-Signature-256 value Meta sends with body:
// "sha256=" and the hex HMAC-SHA256 of the raw body keyed with the app
// secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks header (the X-Hub-Signature-256 value) against body. The
// comparison is in constant time (hmac.Equal), so an attacker learns
// nothing from how long a wrong guess took.
func Verify(secret, body []byte, header string) error {
	if header == "" {
		return ErrUnsigned
	}
	hexSum, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return ErrBadSignature
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return ErrBadSignature
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	if !hmac.Equal(got, m.Sum(nil)) {
		return ErrBadSignature
	}
	return nil
}
