package webhooks

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/certs"
)

// webhookCA is the CA bundle an operator set with POST
// /v1/certificates/webhooks/ca (the settings row webhooks.ca): the webhook
// client trusts it in addition to the system roots, so an internal CA
// works and a publicly certified URL keeps working alongside it. The
// original needed every coreapp restarted after an upload; here the row is
// re-read when settings_version moves and the dispatcher starts a new term
// (a new client) when the bundle changed.
type webhookCA struct {
	Deps
	mu    sync.Mutex
	watch certs.Watch
	key   [32]byte // hash of the bundle in force; zero: none
	cfg   *tls.Config
}

func newWebhookCA(d Deps) *webhookCA {
	return &webhookCA{Deps: d, watch: certs.Watch{Name: certs.WebhooksCARow}}
}

// current returns the TLS configuration for webhook requests (nil: the
// system roots only) and a key that changes with the bundle.
func (w *webhookCA) current(ctx context.Context) (*tls.Config, [32]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	changed, err := w.watch.Refresh(qctx, w.DB, w.Settings.Version())
	if err != nil {
		if ctx.Err() == nil {
			w.DBError("read the webhook CA", err)
		}
		return w.cfg, w.key
	}
	if !changed {
		return w.cfg, w.key
	}
	v, ok := w.watch.Value()
	if !ok {
		w.cfg, w.key = nil, [32]byte{}
		w.Log.Info("webhook CA: none set; the webhook client trusts the system roots")
		return w.cfg, w.key
	}
	cas, _, err := certs.ParseCABundle([]byte(v))
	if err != nil {
		// The master validated it; a row written by hand may not be.
		w.Log.Error("webhook CA in the database does not parse; keeping the previous one", "err", err)
		return w.cfg, w.key
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	w.cfg, w.key = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, sha256.Sum256([]byte(v))
	w.Log.Info("webhook CA: the webhook client trusts the uploaded certificates and the system roots", "certificates", len(cas))
	return w.cfg, w.key
}
