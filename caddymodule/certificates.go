package caddymodule

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// externalCA answers GET /v1/certificates/external/ca: the CA certificate
// (PEM, text/plain, as the original) of the certificate this gateway served
// on the request's connection when that certificate is self-issued, that
// is issued by one of Caddy's internal CAs (the pki app; `tls internal` or
// the multiconnect certificate manager's fallback). Otherwise (plain HTTP,
// an uploaded certificate, a publicly issued one) there is no such CA:
// 404 with 1006, where the original answered 404 with no body.
func (g *Gateway) externalCA(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use GET /v1/certificates/external/ca")
		return
	}
	if r.TLS == nil {
		writeError(w, 0, apierror.NotFound, "this gateway serves plain HTTP: it has no certificate, so no self-signed CA")
		return
	}
	root := g.internalRootOf(servedChain(r.TLS.ServerName))
	if root == nil {
		writeError(w, 0, apierror.NotFound, "the certificate this gateway serves is not self-issued: no CA certificate to download")
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}))
}

// servedChain is the chain the gateway serves for server name sni, found
// as Caddy's handshake finds it: a certificate Caddy manages or loaded for
// the name first, then the multiconnect certificate manager.
func servedChain(sni string) [][]byte {
	if sni != "" {
		if cs := caddytls.AllMatchingCertificates(sni); len(cs) > 0 {
			return cs[0].Certificate.Certificate
		}
	}
	if m := managers.latest(); m != nil {
		if c := m.served(); c != nil {
			return c.Certificate
		}
	}
	return nil
}

// internalRootOf returns the root of the pki app CA that issued chain's
// leaf, or nil when none did.
func (g *Gateway) internalRootOf(chain [][]byte) *x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	app, err := g.caddyCtx.AppIfConfigured("pki")
	if err != nil {
		return nil // no internal CA in this configuration
	}
	pki, ok := app.(*caddypki.PKI)
	if !ok {
		return nil
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, ca := range pki.CAs {
		root := ca.RootCertificate()
		if root == nil {
			continue
		}
		roots := x509.NewCertPool()
		roots.AddCert(root)
		for _, c := range ca.IntermediateCertificateChain() {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err == nil {
			return root
		}
	}
	return nil
}
