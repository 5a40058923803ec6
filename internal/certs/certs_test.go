package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

type pair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func mk(t *testing.T, n int64, ca bool, parent *pair, from, to time.Time) *pair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: "c" + string(rune('0'+n))},
		NotBefore: from, NotAfter: to, IsCA: ca, BasicConstraintsValid: true, DNSNames: []string{"localhost"}}
	p, signer := tmpl, k
	if parent != nil {
		p, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p, &k.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &pair{c, k}
}

func pemOf(t *testing.T, items ...any) []byte {
	var b bytes.Buffer
	for _, it := range items {
		switch v := it.(type) {
		case *x509.Certificate:
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: v.Raw})
		case *ecdsa.PrivateKey:
			der, _ := x509.MarshalECPrivateKey(v)
			pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		case string:
			b.WriteString(v)
		}
	}
	return b.Bytes()
}

func TestParseExternal(t *testing.T) {
	now := time.Now()
	from, to := now.Add(-time.Hour), now.Add(time.Hour)
	root := mk(t, 1, true, nil, from, to)
	inter := mk(t, 2, true, root, from, to)
	leaf := mk(t, 3, false, inter, from, to)
	other := mk(t, 4, false, inter, from, to)
	old := mk(t, 5, false, inter, now.Add(-2*time.Hour), now.Add(-time.Hour))
	notCA := mk(t, 6, false, root, from, to)
	underNotCA := mk(t, 7, false, &pair{notCA.cert, notCA.key}, from, to)

	ext, err := ParseExternal(pemOf(t, leaf.key, leaf.cert, inter.cert), now)
	if err != nil {
		t.Fatalf("a valid upload: %v", err)
	}
	if ext.Cert.Leaf.SerialNumber.Int64() != 3 || len(ext.Cert.Certificate) != 2 {
		t.Fatalf("parsed chain: leaf %v, %d certificates", ext.Cert.Leaf.SerialNumber, len(ext.Cert.Certificate))
	}
	if again, err := ParseExternal(ext.PEM, now); err != nil || !bytes.Equal(again.PEM, ext.PEM) {
		t.Fatalf("the stored form does not parse back to itself: %v", err)
	}
	if _, err := ParseExternal(pemOf(t, leaf.cert, inter.cert, root.cert, leaf.key), now); err != nil {
		t.Fatalf("the key last and the root included: %v", err)
	}
	if _, err := ParseExternal(pemOf(t, old.key, old.cert, inter.cert), time.Time{}); err != nil {
		t.Fatalf("an expired certificate without a time to check: %v", err)
	}
	for name, body := range map[string][]byte{
		"empty":               {},
		"not PEM":             []byte("hello"),
		"no key":              pemOf(t, leaf.cert, inter.cert),
		"two keys":            pemOf(t, leaf.key, other.key, leaf.cert, inter.cert),
		"another key":         pemOf(t, other.key, leaf.cert, inter.cert),
		"no intermediate":     pemOf(t, leaf.key, leaf.cert),
		"out of order":        pemOf(t, leaf.key, inter.cert, leaf.cert),
		"wrong issuer":        pemOf(t, leaf.key, leaf.cert, root.cert),
		"expired":             pemOf(t, old.key, old.cert, inter.cert),
		"intermediate not CA": pemOf(t, underNotCA.key, underNotCA.cert, notCA.cert),
		"trailing text":       pemOf(t, leaf.key, leaf.cert, inter.cert, "junk"),
		"another block":       pemOf(t, leaf.key, leaf.cert, inter.cert, "-----BEGIN X-----\nAAAA\n-----END X-----\n"),
		"encrypted key":       pemOf(t, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", leaf.cert, inter.cert),
		"certificate garbage": pemOf(t, leaf.key, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", inter.cert),
	} {
		_, err := ParseExternal(body, now)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		} else if strings.Contains(err.Error(), "PRIVATE KEY-----") {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
}

func TestParseCABundle(t *testing.T) {
	now := time.Now()
	a := mk(t, 1, true, nil, now.Add(-time.Hour), now.Add(time.Hour))
	b := mk(t, 2, true, nil, now.Add(-time.Hour), now.Add(time.Hour))
	cas, norm, err := ParseCABundle(pemOf(t, "\n", a.cert, b.cert, "\n"))
	if err != nil || len(cas) != 2 || !bytes.Equal(norm, pemOf(t, a.cert, b.cert)) {
		t.Fatalf("a bundle of two: %d certificates, %v", len(cas), err)
	}
	for name, body := range map[string][]byte{
		"empty":   {},
		"not PEM": []byte("hello"),
		"a key":   pemOf(t, a.cert, a.key),
		"garbage": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
	} {
		if _, _, err := ParseCABundle(body); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
}
