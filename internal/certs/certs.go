// Package certs holds the cluster's certificates as the original's
// /v1/certificates routes manage them: the gateway's own certificate and key
// (POST /v1/certificates/external, the settings row "certificates.external")
// and the CA the coreapps trust for the webhook URL
// (/v1/certificates/webhooks/ca, the row "webhooks.ca"). Both are PEM text
// in a row of the settings table; writing one bumps settings_version, which
// every node already polls, so gateways and coreapps pick a change up
// without a restart.
package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// Names of the settings rows.
const (
	ExternalRow   = "certificates.external"
	WebhooksCARow = "webhooks.ca"
)

// MaxUpload bounds an uploaded PEM document.
const MaxUpload = 1 << 20

// ErrInvalid wraps every reason an upload is refused (the API's 1009).
var ErrInvalid = errors.New("certificate not valid")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// blocks splits a PEM document into its blocks, refusing anything that is
// not PEM (text outside blocks other than whitespace).
func blocks(data []byte) ([]*pem.Block, error) {
	var out []*pem.Block
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		out = append(out, b)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, invalid("the body must be PEM blocks only; text after block %d is not PEM", len(out))
	}
	if len(out) == 0 {
		return nil, invalid("the body holds no PEM block")
	}
	return out, nil
}

// External is a parsed gateway certificate: the chain (leaf first) and its key.
type External struct {
	Cert tls.Certificate // Leaf set
	// PEM is the normalised document stored: the key, then the chain in order.
	PEM []byte
}

// ParseExternal parses what POST /v1/certificates/external takes: one
// private key and the certificate chain, the leaf first and then at least
// one intermediate CA certificate (the original refused an upload without
// one), each signed by the next. The original wanted the key first; any
// position of the key is taken. When now is not zero, a certificate of the
// chain that is not valid at now is refused.
func ParseExternal(data []byte, now time.Time) (*External, error) {
	bs, err := blocks(data)
	if err != nil {
		return nil, err
	}
	var keyPEM, chainPEM []byte
	var chain []*x509.Certificate
	keys := 0
	for i, b := range bs {
		switch {
		case b.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, invalid("certificate %d does not parse: %v", len(chain)+1, err)
			}
			chain = append(chain, c)
			chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})...)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			if b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "" {
				return nil, invalid("the private key is encrypted; upload it unencrypted")
			}
			keys++
			keyPEM = pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})
		default:
			return nil, invalid("PEM block %d is a %q; only a private key and certificates are taken", i+1, b.Type)
		}
	}
	switch {
	case keys == 0:
		return nil, invalid("no private key: the body must hold the private key, the certificate and its intermediate CA certificates")
	case keys > 1:
		return nil, invalid("%d private keys: the body must hold exactly one", keys)
	case len(chain) == 0:
		return nil, invalid("no certificate")
	case len(chain) == 1:
		return nil, invalid("no intermediate CA certificate after the certificate: at least one is required, as in the original")
	}
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, invalid("the private key does not match the first certificate, or does not parse: %v", err)
	}
	cert.Leaf = chain[0]
	for i, c := range chain {
		if i > 0 && !c.IsCA {
			return nil, invalid("certificate %d (%s) is not a CA certificate", i+1, c.Subject)
		}
		if i+1 < len(chain) {
			if err := c.CheckSignatureFrom(chain[i+1]); err != nil {
				return nil, invalid("certificate %d (%s) is not signed by certificate %d (%s): the chain must be in order, leaf first: %v",
					i+1, c.Subject, i+2, chain[i+1].Subject, err)
			}
		}
		if !now.IsZero() && (now.Before(c.NotBefore) || !now.Before(c.NotAfter)) {
			return nil, invalid("certificate %d (%s) is valid from %s to %s, not now", i+1, c.Subject,
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return &External{Cert: cert, PEM: append(keyPEM, chainPEM...)}, nil
}

// ParseCABundle parses what POST /v1/certificates/webhooks/ca takes: one
// or more PEM certificates (a bundle is certificates concatenated), and
// nothing else: a private key in it is refused, so none is ever stored.
func ParseCABundle(data []byte) ([]*x509.Certificate, []byte, error) {
	bs, err := blocks(data)
	if err != nil {
		return nil, nil, err
	}
	var out []*x509.Certificate
	var norm []byte
	for i, b := range bs {
		if b.Type != "CERTIFICATE" {
			return nil, nil, invalid("PEM block %d is a %q; only certificates are taken", i+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, invalid("certificate %d does not parse: %v", i+1, err)
		}
		out = append(out, c)
		norm = append(norm, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})...)
	}
	return out, norm, nil
}

// Load reads a row; ok is false when there is none.
func Load(ctx context.Context, q cluster.Querier, name string) (value string, ok bool, err error) {
	err = q.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = ?`, name).Scan(&value)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", name, err)
	}
	return value, true, nil
}

// Store writes a row and bumps settings_version. q should be the primary
// master's fenced transaction.
func Store(ctx context.Context, q cluster.Querier, name string, value []byte) error {
	if _, err := q.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, NOW(6))
		ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = NOW(6)`, name, string(value)); err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	return cluster.BumpSettings(ctx, q)
}

// Delete removes a row and bumps settings_version when there was one.
func Delete(ctx context.Context, q cluster.Querier, name string) error {
	res, err := q.ExecContext(ctx, `DELETE FROM settings WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	return cluster.BumpSettings(ctx, q)
}

// Watch keeps one row's value as of the latest settings_version a node
// has seen: Refresh reads the row again only when that version moved, so a
// caller may call it as often as it polls.
type Watch struct {
	Name    string
	version int64
	seen    bool
	value   string
	present bool
}

// Refresh re-reads the row if version differs from the one last read, and
// says whether the value changed. On an error the last value stays.
func (w *Watch) Refresh(ctx context.Context, q cluster.Querier, version int64) (changed bool, err error) {
	if w.seen && version == w.version {
		return false, nil
	}
	v, ok, err := Load(ctx, q, w.Name)
	if err != nil {
		return false, err
	}
	changed = !w.seen || ok != w.present || v != w.value
	w.version, w.seen, w.value, w.present = version, true, v, ok
	return changed, nil
}

// Value is the row's value as last read; ok is false when there was none.
func (w *Watch) Value() (value string, ok bool) { return w.value, w.present }
