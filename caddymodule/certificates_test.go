package caddymodule

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/certs"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// testCA is a certificate authority a test makes with crypto/x509.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serials atomic.Int64

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue signs a certificate for key by ca (self-signed when ca is nil).
func issue(t testing.TB, ca *testCA, key *ecdsa.PrivateKey, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(serials.Add(1) + time.Now().UnixNano())
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newTestCA makes a root (parent nil) or an intermediate CA under parent.
func newTestCA(t testing.TB, name string, parent *testCA) *testCA {
	key := newKey(t)
	c := issue(t, parent, key, &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	return &testCA{cert: c, key: key}
}

// leaf issues a server certificate for localhost and 127.0.0.1.
func (ca *testCA) leaf(t testing.TB, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := newKey(t)
	return issue(t, ca, key, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, NotBefore: notBefore, NotAfter: notAfter,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}), key
}

func certPEM(cs ...*x509.Certificate) string {
	var b bytes.Buffer
	for _, c := range cs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.String()
}

func keyPEM(t testing.TB, k *ecdsa.PrivateKey) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// startHTTPSGateway runs bin/caddy on HTTPS, as the README shows, and
// waits until it is ready: with the multiconnect certificate manager when
// tlsLine is empty, else with that tls directive (for example "tls
// internal") in a site for localhost. Each gateway has its own storage, so
// its own internal CA. Its client sends server name localhost.
func (c *testCluster) startHTTPSGateway(tlsLine string) *gateway {
	c.t.Helper()
	g := c.launchHTTPSGateway(tlsLine)
	g.waitReady(map[string]string{"Authorization": "Apikey " + testAPIKey})
	return g
}

// launchHTTPSGateway is startHTTPSGateway without waiting for readiness.
func (c *testCluster) launchHTTPSGateway(tlsLine string) *gateway {
	c.t.Helper()
	port := freePort(c.t)
	site, url := fmt.Sprintf("https://:%d", port), fmt.Sprintf("https://127.0.0.1:%d", port)
	if tlsLine == "" {
		tlsLine = "tls {\n\t\tget_certificate multiconnect\n\t}"
	} else {
		// A site for a host name matches requests for that name only.
		site, url = fmt.Sprintf("https://localhost:%d", port), fmt.Sprintf("https://localhost:%d", port)
	}
	caddyfile := fmt.Sprintf(`{
	admin off
	persist_config off
	skip_install_trust
	auto_https disable_redirects
}
%s {
	%s
	log {
		output stderr
	}
	multiconnect {
		bcrypt_cost 4
	}
}
`, site, tlsLine)
	path := filepath.Join(c.t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		c.t.Fatal(err)
	}
	// The test's own client does not check the certificate: what the
	// gateway serves is checked apart, with served().
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}}
	return c.launchCaddy(url, tr, []string{"WA_API_KEY=" + testAPIKey},
		"run", "--config", path, "--adapter", "caddyfile")
}

// internalCA reads GET /v1/certificates/external/ca and checks the CA it
// returns verifies the chain the gateway serves (and that nothing else
// does).
func (g *gateway) internalCA(token, what string) *x509.Certificate {
	g.t.Helper()
	st, body := g.do("GET", "/v1/certificates/external/ca", "", bearer(token))
	if st != 200 {
		g.t.Fatalf("%s: GET external/ca with the internal CA: HTTP %d %s", what, st, body)
	}
	blk, _ := pem.Decode([]byte(body))
	if blk == nil || blk.Type != "CERTIFICATE" {
		g.t.Fatalf("%s: external/ca is not a PEM certificate: %q", what, body)
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !ca.IsCA {
		g.t.Fatalf("%s: external/ca: not a CA certificate (%v)", what, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	chain, err := g.served(roots)
	if err != nil {
		g.t.Fatalf("%s: the chain it serves does not verify with the CA it gave: %v", what, err)
	}
	g.t.Logf("%s: serves %q issued by %q; external/ca is %q", what, chain[0].Subject, chain[0].Issuer, ca.Subject)
	if _, err := g.served(x509.NewCertPool()); err == nil {
		g.t.Fatalf("%s: its chain verifies with no root at all", what)
	}
	return ca
}

// served dials the gateway as a client trusting only roots (for server
// name localhost) and returns the chain it was served, or the error.
func (g *gateway) served(roots *x509.CertPool) ([]*x509.Certificate, error) {
	addr := strings.TrimPrefix(g.url, "https://")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

func textHeaders(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token, "Content-Type": "text/plain"}
}

// TestCertificatesOverHTTPS runs two gateways on HTTPS in front of a real
// cluster. First each serves a certificate from its internal CA, and
// GET /v1/certificates/external/ca returns a CA that verifies the chain it
// serves. Uploads that are not a valid chain and key are refused with 1009
// and store nothing. Then a certificate the test made is uploaded through
// one gateway, and both serve it within a short bound, without a restart;
// external/ca then answers 404 (1006): that certificate is not self-issued.
// A gateway with plain `tls internal` gives its CA too.
func TestCertificatesOverHTTPS(t *testing.T) {
	cl := clustertest.New(t, clustertest.Options{Masters: 2, Coreapps: 1, Shards: 1})
	c := &testCluster{t: t, srv: cl.DB, db: cl.SQL, secret: cl.Secret, realMasters: true}
	c.shards.Store(1)
	gws := []*gateway{c.startHTTPSGateway(""), c.startHTTPSGateway("")}
	token := gws[0].loginAdmin()

	for i, g := range gws {
		g.internalCA(token, fmt.Sprintf("gateway %d", i))
	}

	root := newTestCA(t, "multiconnect test root", nil)
	inter := newTestCA(t, "multiconnect test intermediate", root)
	leaf, key := inter.leaf(t, time.Now().Add(-time.Hour), time.Now().Add(12*time.Hour))
	expired, expiredKey := inter.leaf(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	_, otherKey := inter.leaf(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	strangerCA := newTestCA(t, "unrelated intermediate", root)

	bad := []struct{ name, body string }{
		{"not PEM", "hello"},
		{"a certificate without its key", certPEM(leaf, inter.cert)},
		{"a key that is not the leaf's", keyPEM(t, otherKey) + certPEM(leaf, inter.cert)},
		{"no intermediate CA certificate", keyPEM(t, key) + certPEM(leaf)},
		{"an expired certificate", keyPEM(t, expiredKey) + certPEM(expired, inter.cert)},
		{"a chain out of order", keyPEM(t, key) + certPEM(leaf, strangerCA.cert)},
		{"text after the PEM blocks", keyPEM(t, key) + certPEM(leaf, inter.cert) + "trailing"},
	}
	for _, b := range bad {
		st, body := gws[0].do("POST", "/v1/certificates/external", b.body, textHeaders(token))
		expect(t, "upload of "+b.name, st, body, 400, apierror.ParameterInvalid)
		if strings.Contains(body, "PRIVATE KEY") {
			t.Fatalf("upload of %s: the answer quotes the key: %s", b.name, body)
		}
	}
	var rows int
	if err := cl.SQL.QueryRow(`SELECT COUNT(*) FROM settings WHERE name = ?`, certs.ExternalRow).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("after refused uploads: %d rows of %s (%v)", rows, certs.ExternalRow, err)
	}

	st, body := gws[1].do("POST", "/v1/certificates/external", keyPEM(t, key)+certPEM(leaf, inter.cert), textHeaders(token))
	if st != 200 || strings.TrimSpace(body) != "null" {
		t.Fatalf("upload: HTTP %d %s", st, body)
	}
	uploaded := time.Now()
	trusted := x509.NewCertPool()
	trusted.AddCert(root.cert)
	const bound = 3 * time.Second
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				chain, err := g.served(trusted)
				if err == nil && chain[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 && len(chain) == 2 {
					t.Logf("gateway %d serves the uploaded certificate %s after the upload", i, time.Since(uploaded).Round(time.Millisecond))
					return
				}
				if time.Since(uploaded) > bound {
					t.Errorf("gateway %d: %s after the upload it does not serve it (err %v)", i, bound, err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for i, g := range gws {
		st, body := g.do("GET", "/v1/certificates/external/ca", "", bearer(token))
		expect(t, fmt.Sprintf("gateway %d: external/ca with an uploaded certificate", i), st, body, 404, apierror.NotFound)
	}
	var stored string
	if err := cl.SQL.QueryRow(`SELECT value FROM settings WHERE name = ?`, certs.ExternalRow).Scan(&stored); err != nil ||
		!strings.Contains(stored, certPEM(leaf, inter.cert)) {
		t.Fatalf("the stored row is not the upload (%v)", err)
	}
	// A gateway started now serves the upload from its first handshake.
	late := c.launchHTTPSGateway("")
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		chain, err := late.served(trusted)
		if err == nil {
			if chain[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
				t.Fatalf("a gateway started after the upload first served %q", chain[0].Subject)
			}
			t.Logf("a gateway started after the upload served it at its first handshake, %s after its start", time.Since(start).Round(time.Millisecond))
			break
		}
		if !strings.Contains(err.Error(), "connection refused") || time.Since(start) > 20*time.Second {
			t.Fatalf("a gateway started after the upload: first handshake: %v", err)
		}
	}

	// A gateway with Caddy's own `tls internal` for localhost, without
	// the certificate manager, keeps its internal certificate (the
	// README says so) and gives its CA.
	internal := c.startHTTPSGateway("tls internal")
	internal.internalCA(token, "the tls internal gateway")

	// Only an ADMIN uploads.
	st, body = gws[0].do("POST", "/v1/certificates/external", "x", map[string]string{"Content-Type": "text/plain"})
	if st != 401 {
		t.Fatalf("upload without a token: HTTP %d %s", st, body)
	}
}

// hookTLS is an HTTPS webhook receiver whose certificate a test CA issued.
type hookTLS struct {
	url        string
	handshakes atomic.Int64 // TLS handshakes that failed
	mu         sync.Mutex
	ids        []string
}

func startHookTLS(t *testing.T, ca *testCA) *hookTLS {
	h := &hookTLS{}
	leaf, key := ca.leaf(t, time.Now().Add(-time.Hour), time.Now().Add(12*time.Hour))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "https://" + ln.Addr().String() + "/hook"
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var p struct {
				Messages []struct {
					ID string `json:"id"`
				} `json:"messages"`
			}
			b, _ := io.ReadAll(r.Body)
			json.Unmarshal(b, &p)
			h.mu.Lock()
			for _, m := range p.Messages {
				h.ids = append(h.ids, m.ID)
			}
			h.mu.Unlock()
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}}},
		ErrorLog:  log.New(handshakeCounter{&h.handshakes}, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return h
}

type handshakeCounter struct{ n *atomic.Int64 }

func (c handshakeCounter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("TLS handshake error")) {
		c.n.Add(1)
	}
	return len(p), nil
}

func (h *hookTLS) got(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.ids {
		if x == id {
			return true
		}
	}
	return false
}

// TestWebhooksCA points the webhook at an HTTPS receiver whose certificate
// a private CA issued. Before that CA is set the coreapp refuses the
// receiver's certificate; once it is set through the gateway the callbacks
// arrive, without a restart; after DELETE they fail again.
func TestWebhooksCA(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 1, Shards: 1}, "")
	token := g.loginAdmin()
	hookCA := newTestCA(t, "webhook test CA", nil)
	hook := startHookTLS(t, hookCA)

	st, body := g.do("GET", "/v1/certificates/webhooks/ca", "", bearer(token))
	expect(t, "webhook CA before one is set", st, body, 404, apierror.NotFound)
	st, body = g.do("PATCH", "/v1/settings/application", `{"webhooks":{"url":"`+hook.url+`"}}`, jsonHeaders(bearer(token)))
	if st != 200 {
		t.Fatalf("set the webhook URL: HTTP %d %s", st, body)
	}
	// A coreapp drops events that arrive while it knows no webhook URL (as
	// the original); settings reach it within one 200 ms poll.
	time.Sleep(600 * time.Millisecond)
	inject := func(id string) {
		t.Helper()
		if err := cl.SimnetPost("/v1/inbound", map[string]any{"shard": 0, "id": id, "recipient": "15550001111",
			"payload": map[string]any{"type": "text", "text": map[string]string{"body": id}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitRefused := func(id string) {
		t.Helper()
		from := hook.handshakes.Load()
		deadline := time.Now().Add(10 * time.Second)
		for hook.handshakes.Load() == from {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the coreapp made no TLS handshake with the receiver in 10s", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		if hook.got(id) {
			t.Fatalf("%s arrived although the receiver's CA is not trusted", id)
		}
	}
	waitArrived := func(id string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for !hook.got(id) {
			if time.Since(start) > within {
				t.Fatalf("%s did not arrive within %s (failed handshakes %d)", id, within, hook.handshakes.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}

	inject("before-ca")
	waitRefused("before-ca")

	for _, bad := range []string{"not a certificate", keyPEM(t, newKey(t)), certPEM(hookCA.cert) + keyPEM(t, hookCA.key)} {
		st, body = g.do("POST", "/v1/certificates/webhooks/ca", bad, textHeaders(token))
		expect(t, "a webhook CA that is not only certificates", st, body, 400, apierror.ParameterInvalid)
	}
	st, body = g.do("GET", "/v1/certificates/webhooks/ca", "", bearer(token))
	expect(t, "webhook CA after refused uploads", st, body, 404, apierror.NotFound)

	st, body = g.do("POST", "/v1/certificates/webhooks/ca", certPEM(hookCA.cert), textHeaders(token))
	if st != 200 || strings.TrimSpace(body) != "{}" {
		t.Fatalf("set the webhook CA: HTTP %d %s", st, body)
	}
	t.Logf("the callback refused before the CA was set arrived %s after it was set", waitArrived("before-ca", 10*time.Second))
	st, body = g.do("GET", "/v1/certificates/webhooks/ca", "", bearer(token))
	if st != 200 || body != certPEM(hookCA.cert) {
		t.Fatalf("GET webhook CA: HTTP %d %q", st, body)
	}
	inject("with-ca")
	waitArrived("with-ca", 5*time.Second)

	st, body = g.do("DELETE", "/v1/certificates/webhooks/ca", "", bearer(token))
	if st != 200 {
		t.Fatalf("DELETE webhook CA: HTTP %d %s", st, body)
	}
	st, body = g.do("GET", "/v1/certificates/webhooks/ca", "", bearer(token))
	expect(t, "webhook CA after DELETE", st, body, 404, apierror.NotFound)
	time.Sleep(600 * time.Millisecond) // the coreapp notices within one settings poll
	inject("after-delete")
	waitRefused("after-delete")
}
