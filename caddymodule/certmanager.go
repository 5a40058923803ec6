package caddymodule

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/multiconnect/multiconnect/internal/certs"
	"github.com/multiconnect/multiconnect/internal/shardmap"
)

func init() {
	caddy.RegisterModule(CertManager{})
}

// CertManager serves, on every TLS handshake, the gateway certificate
// stored with POST /v1/certificates/external (the settings row
// certificates.external), and while none is stored a certificate from
// Caddy's internal CA (the pki app's "local" CA, as `tls internal`). The
// row is re-read when settings_version moves, which the gateway's shard map
// poll reads anyway (at once when the primary master pushes the change),
// so every gateway serves an upload within milliseconds and without a
// restart. Use it in a site without a host name,
// so Caddy manages no certificate of its own that would be served first:
//
//	https://:9090 {
//	    tls {
//	        get_certificate multiconnect
//	    }
//	    multiconnect
//	}
type CertManager struct {
	// The cluster's MySQL, as in the multiconnect handler (db.env by default).
	Database *DatabaseConfig `json:"database,omitempty"`
	// The shard map poll interval, as in the handler: equal values share
	// one poll. Default: 10s (a safety net; changes are pushed).
	RefreshInterval caddy.Duration `json:"refresh_interval,omitempty"`
	// The pki app CA that issues the certificate served while none is
	// stored. Default: local.
	CA string `json:"ca,omitempty"`
	// The names that certificate is for. Default: localhost, 127.0.0.1,
	// ::1, this host's name and EXTERNAL_HOSTNAME when set.
	Names []string `json:"names,omitempty"`

	log     *zap.Logger
	view    *clusterView
	viewKey viewKey
	issuer  certmagic.Issuer
	cancel  context.CancelFunc
	done    chan struct{}

	*certState
}

// certState is what a CertManager serves (apart, so the module value can
// be copied before it is provisioned).
type certState struct {
	stored     atomic.Pointer[tls.Certificate] // nil: none stored
	loaded     chan struct{}                   // closed once the row was read
	loadedOnce sync.Once
	fbMu       sync.Mutex
	fallback   atomic.Pointer[tls.Certificate]
}

// firstLoadWait bounds how long a handshake at start waits for the stored
// certificate to be read, rather than serving the internal CA's when an
// upload exists.
const firstLoadWait = 2 * time.Second

// CaddyModule returns the Caddy module information.
func (CertManager) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.get_certificate.multiconnect",
		New: func() caddy.Module { return new(CertManager) },
	}
}

// Provision joins the gateway's view of the cluster and starts following
// the stored certificate.
func (m *CertManager) Provision(ctx caddy.Context) error {
	m.log = ctx.Logger()
	m.certState = &certState{loaded: make(chan struct{})}
	setDefault(&m.RefreshInterval, shardmap.SafetyPoll)
	if m.CA == "" {
		m.CA = "local"
	}
	if len(m.Names) == 0 {
		m.Names = defaultCertNames()
	}
	cfg, err := (&Gateway{Database: m.Database}).databaseConfig(caddy.NewReplacer())
	if err != nil {
		return err
	}
	raw, _ := json.Marshal(map[string]string{"ca": m.CA})
	iss, err := ctx.LoadModuleByID("tls.issuance.internal", raw)
	if err != nil {
		return fmt.Errorf("multiconnect certificates: the internal issuer: %w", err)
	}
	m.issuer = iss.(certmagic.Issuer)
	m.view, m.viewKey, err = loadView(cfg, time.Duration(m.RefreshInterval), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("multiconnect certificates: cluster view: %w", err)
	}
	bg, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go m.follow(bg)
	managers.add(m)
	return nil
}

func defaultCertNames() []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append(names, h)
	}
	if h := os.Getenv("EXTERNAL_HOSTNAME"); h != "" {
		names = append(names, h)
	}
	return names
}

// Cleanup stops following and leaves the shared view.
func (m *CertManager) Cleanup() error {
	managers.remove(m)
	if m.cancel != nil {
		m.cancel()
		<-m.done
	}
	if m.view != nil {
		if _, err := views.Delete(m.viewKey); err != nil {
			return fmt.Errorf("closing the multiconnect cluster view: %w", err)
		}
	}
	return nil
}

// follow keeps m.stored equal to the row, re-reading it when
// settings_version moves (an atomic load per tick otherwise).
func (m *CertManager) follow(ctx context.Context) {
	defer close(m.done)
	select {
	case <-m.view.connected:
	case <-ctx.Done():
		return
	}
	db := m.view.db.Load()
	watch := certs.Watch{Name: certs.ExternalRow}
	t := time.NewTicker(time.Duration(m.RefreshInterval))
	defer t.Stop()
	failing := false
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		changed, err := watch.Refresh(qctx, db, m.view.settingsVersion())
		cancel()
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			m.log.Warn("cannot read the stored gateway certificate; serving the one in force", zap.Error(err))
		case err == nil && changed:
			m.apply(watch.Value())
		}
		if err == nil {
			m.loadedOnce.Do(func() { close(m.loaded) })
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-m.view.pollDone():
		case <-t.C:
		}
	}
}

func (m *CertManager) apply(value string, ok bool) {
	if !ok {
		if m.stored.Swap(nil) != nil {
			m.log.Info("no gateway certificate stored: serving the internal CA's")
		}
		return
	}
	// Validity dates are not checked here: the master refused an expired
	// upload, and a certificate that expired since is what the operator
	// chose until they upload another (a warning says so).
	ext, err := certs.ParseExternal([]byte(value), time.Time{})
	if err != nil {
		m.log.Error("the stored gateway certificate does not parse; keeping the one in force", zap.Error(err))
		return
	}
	leaf := ext.Cert.Leaf
	if time.Now().After(leaf.NotAfter) {
		m.log.Warn("the stored gateway certificate has expired; upload a new one", zap.Time("not_after", leaf.NotAfter))
	}
	m.stored.Store(&ext.Cert)
	m.log.Info("serving the stored gateway certificate", zap.String("subject", leaf.Subject.String()),
		zap.Strings("dns_names", leaf.DNSNames), zap.Time("not_after", leaf.NotAfter))
}

// GetCertificate implements certmagic.Manager: the stored certificate, or
// the internal CA's.
func (m *CertManager) GetCertificate(ctx context.Context, _ *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.stored.Load(); c != nil {
		return c, nil
	}
	select {
	case <-m.loaded:
	default:
		t := time.NewTimer(firstLoadWait)
		select {
		case <-m.loaded:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if c := m.stored.Load(); c != nil {
			return c, nil
		}
	}
	return m.internal(ctx)
}

// internal returns the certificate from the internal CA for m.Names,
// issuing a new one when two thirds of the last one's lifetime are over.
func (m *CertManager) internal(ctx context.Context) (*tls.Certificate, error) {
	if c := m.fallback.Load(); c != nil && !renewDue(c.Leaf, time.Now()) {
		return c, nil
	}
	m.fbMu.Lock()
	defer m.fbMu.Unlock()
	if c := m.fallback.Load(); c != nil && !renewDue(c.Leaf, time.Now()) {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: m.Names[0]}}
	for _, n := range m.Names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	issued, err := m.issuer.Issue(ctx, csr)
	if err != nil {
		return nil, fmt.Errorf("the internal CA: %w", err)
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(issued.Certificate, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("the internal CA's certificate: %w", err)
	}
	m.fallback.Store(&c)
	m.log.Info("issued the gateway's certificate from the internal CA", zap.String("ca", m.CA),
		zap.Strings("names", m.Names), zap.Time("not_after", c.Leaf.NotAfter))
	return &c, nil
}

func renewDue(leaf *x509.Certificate, now time.Time) bool {
	return leaf == nil || now.After(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)*2/3))
}

// served is the certificate m hands out now, without issuing one (nil
// before the first handshake that needed the internal CA's).
func (m *CertManager) served() *tls.Certificate {
	if c := m.stored.Load(); c != nil {
		return c
	}
	return m.fallback.Load()
}

// UnmarshalCaddyfile reads
//
//	get_certificate multiconnect {
//	    database { ... }          # as in the multiconnect handler
//	    refresh_interval <duration>
//	    ca    <pki CA id>         # default local
//	    names <name...>           # of the internal CA's certificate
//	}
func (m *CertManager) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the manager's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "database":
			g := &Gateway{}
			if err := g.unmarshalDatabase(d); err != nil {
				return err
			}
			m.Database = g.Database
		case "refresh_interval":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("refresh_interval: %q is not a positive duration", v)
			}
			m.RefreshInterval = caddy.Duration(dur)
		case "ca":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			m.CA = v
		case "names":
			m.Names = d.RemainingArgs()
			if len(m.Names) == 0 {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown setting %q (database, refresh_interval, ca, names)", d.Val())
		}
	}
	return nil
}

// managers are the provisioned certificate managers of this process, so
// GET /v1/certificates/external/ca can tell what a connection was served.
var managers managerSet

type managerSet struct {
	mu   sync.Mutex
	list []*CertManager
}

func (s *managerSet) add(m *CertManager) {
	s.mu.Lock()
	s.list = append(s.list, m)
	s.mu.Unlock()
}

func (s *managerSet) remove(m *CertManager) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.list {
		if x == m {
			s.list = append(s.list[:i], s.list[i+1:]...)
			return
		}
	}
}

// latest is the manager of the newest configuration, or nil.
func (s *managerSet) latest() *CertManager {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) == 0 {
		return nil
	}
	return s.list[len(s.list)-1]
}

// Interface guards
var (
	_ caddy.Provisioner     = (*CertManager)(nil)
	_ caddy.CleanerUpper    = (*CertManager)(nil)
	_ certmagic.Manager     = (*CertManager)(nil)
	_ caddyfile.Unmarshaler = (*CertManager)(nil)
)
