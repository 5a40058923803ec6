// Package graphtest is a Graph API test server: it stands in for Meta's
// WhatsApp Cloud API in tests (the real host is out of reach), in process
// (Server is an http.Handler) or as the graphapid command.
//
// It refuses what Meta would: every request is validated against Meta's
// published OpenAPI description (package metaspec) before it is served,
// the access token is checked, throughput and the per-recipient pair limit
// are enforced. It does what Meta does: it issues wamids, sends signed
// status and inbound-message webhooks in the description's webhook shape,
// retrying them in order per contact, stores media, runs registration. And
// it records everything, with the X-Multiconnect-Node/-Shard/-Epoch headers
// of each send, so a test can ask whether two nodes ever sent for one shard
// at once (Violations). Faults (errors, latency, timeouts, cut connections)
// are injected through the control API under /_test/ (control.go) or the
// same methods in process.
package graphtest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

// Config is the server's configuration.
type Config struct {
	// PhoneNumberIDs are the business numbers served (digits, as Meta's).
	PhoneNumberIDs []string
	AccessToken    string
	// AppSecret signs webhooks (X-Hub-Signature-256).
	AppSecret string
	// WebhookURL receives webhooks (the gateway's /cloudapi/webhook); empty
	// means webhooks are recorded as undeliverable and dropped.
	WebhookURL string
	// WABAID is the business account id in webhooks (default 100000000000001).
	WABAID string
	// Throughput is messages/s per number (token bucket, burst one second's
	// worth); 0 means unlimited. Beyond it: error 130429.
	Throughput float64
	// PairInterval is the least time between two messages to one recipient
	// (Meta's is about 6 s); 0 means no limit. Sooner: error 131056.
	PairInterval time.Duration
	// Statuses are the statuses sent for each accepted message, in order
	// (default sent, delivered, read), StatusDelay apart (default 10 ms).
	Statuses    []string
	StatusDelay time.Duration
	// Webhook retries: first backoff RetryMin (default 50 ms), doubling up
	// to RetryMax (default 1 s), given up RetryFor after the first attempt
	// (default 1 min; Meta retries for 7 days).
	RetryMin, RetryMax, RetryFor time.Duration
	// WebhookTimeout bounds one webhook POST (default 5 s).
	WebhookTimeout time.Duration
	Logger         *slog.Logger
}

// Server is the Graph API test server.
type Server struct {
	cfg  Config
	log  *slog.Logger
	spec *metaspec.Spec
	hc   *http.Client

	mu         sync.Mutex
	token      string
	expired    bool
	phones     map[string]bool
	limiters   map[string]*rate.Limiter
	lastToPair map[string]time.Time // phone+" "+to → last accepted send
	faults     []*Fault
	failNext   []failRule
	st         State
	seq        int64
	queues     map[string]*queue // per contact
	closed     bool
	wg         sync.WaitGroup
	stop       chan struct{}
}

// New returns a server for cfg; Close stops its webhook senders.
func New(cfg Config) (*Server, error) {
	if len(cfg.PhoneNumberIDs) == 0 {
		return nil, fmt.Errorf("graphtest: at least one phone number id is needed")
	}
	for _, p := range cfg.PhoneNumberIDs {
		if _, err := strconv.ParseUint(p, 10, 64); err != nil {
			return nil, fmt.Errorf("graphtest: phone number id %q is not digits (Meta's are)", p)
		}
	}
	if cfg.AccessToken == "" {
		return nil, fmt.Errorf("graphtest: an access token is needed")
	}
	if cfg.WABAID == "" {
		cfg.WABAID = "100000000000001"
	}
	if cfg.Statuses == nil {
		cfg.Statuses = []string{"sent", "delivered", "read"}
	}
	if cfg.StatusDelay <= 0 {
		cfg.StatusDelay = 10 * time.Millisecond
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = time.Minute
	}
	if cfg.WebhookTimeout <= 0 {
		cfg.WebhookTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	spec, err := metaspec.Default()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "graphtest"),
		spec:       spec,
		hc:         &http.Client{Timeout: cfg.WebhookTimeout},
		token:      cfg.AccessToken,
		phones:     map[string]bool{},
		limiters:   map[string]*rate.Limiter{},
		lastToPair: map[string]time.Time{},
		queues:     map[string]*queue{},
		stop:       make(chan struct{}),
	}
	s.st.init()
	for _, p := range cfg.PhoneNumberIDs {
		s.phones[p] = true
	}
	s.resetLimitersLocked()
	return s, nil
}

// Close stops the webhook senders (undelivered webhooks are dropped).
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.stop)
	for _, q := range s.queues {
		q.signal()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) resetLimitersLocked() {
	for p := range s.phones {
		if s.cfg.Throughput > 0 {
			burst := int(s.cfg.Throughput)
			if burst < 1 {
				burst = 1
			}
			s.limiters[p] = rate.NewLimiter(rate.Limit(s.cfg.Throughput), burst)
		} else {
			delete(s.limiters, p)
		}
	}
}

// ServeHTTP serves the Graph API, media downloads and the control API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/_test/"):
		s.control(w, r)
	case strings.HasPrefix(r.URL.Path, mediaDownloadPath):
		s.download(w, r)
	default:
		s.graph(w, r)
	}
}

// recorder captures a handler's answer so that a fault can drop it.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (rec *recorder) Header() http.Header { return rec.header }
func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
}
func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.body.Write(b)
}

func (rec *recorder) copyTo(w http.ResponseWriter) {
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body.Bytes())
}

// graph serves one Graph API request: token, validation, faults, then the
// operation itself.
func (s *Server) graph(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 128<<20))
	if err != nil {
		return // the client went away
	}
	req := s.record(r, body, start)
	finish := func(status, code int, fault string) {
		s.mu.Lock()
		req.End, req.Status, req.Code = time.Now(), status, code
		if fault != "" {
			req.Fault = fault
		}
		s.mu.Unlock()
	}

	rec := &recorder{header: http.Header{}}
	if e := s.checkToken(r); e != nil {
		writeGraphError(rec, e)
		rec.copyTo(w)
		finish(rec.status, e.Code, "")
		return
	}
	tmpl := s.template(r.URL.Path)
	if err := s.spec.ValidateOperation(tmpl, r, body); err != nil {
		e := invalidParameter(err.Error())
		writeGraphError(rec, e)
		rec.copyTo(w)
		finish(rec.status, e.Code, "")
		return
	}

	f := s.takeFault(r)
	if f != nil && f.LatencyMS > 0 {
		select {
		case <-time.After(time.Duration(f.LatencyMS) * time.Millisecond):
		case <-r.Context().Done():
		}
	}
	if f != nil {
		switch f.mode() {
		case ModeError:
			e := f.graphError()
			if e == nil { // a bare status, not a Graph error document
				http.Error(w, http.StatusText(f.HTTPStatus), f.HTTPStatus)
				finish(f.HTTPStatus, 0, "status")
				return
			}
			writeGraphError(w, e)
			finish(e.HTTPStatus, e.Code, "error")
			return
		case ModeTimeout, ModeCut:
			if !f.Processed {
				if f.mode() == ModeTimeout {
					s.hold(r, f)
				}
				cut(w)
				finish(0, 0, string(f.mode())+" (not processed)")
				return
			}
		}
	}

	code := s.serveOperation(rec, r, tmpl, body, req)
	if f != nil && f.Processed {
		switch f.mode() {
		case ModeTimeout:
			s.hold(r, f)
			if r.Context().Err() == nil {
				rec.copyTo(w)
			}
			finish(rec.status, code, "timeout (processed)")
			return
		case ModeCut:
			cut(w)
			finish(0, code, "cut (processed)")
			return
		}
	}
	rec.copyTo(w)
	finish(rec.status, code, "")
}

// hold keeps a request past the client's patience: HoldMS (default 60 s)
// or until the client gives up.
func (s *Server) hold(r *http.Request, f *Fault) {
	d := time.Duration(f.HoldMS) * time.Millisecond
	if d <= 0 {
		d = time.Minute
	}
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	case <-s.stop:
	}
}

// cut closes the connection without an answer.
func cut(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = buf.Flush()
	_ = conn.Close()
}

// template names the description's operation a Graph path is served as:
// /{Version}/{id} is a phone number when it is one of ours, else media.
func (s *Server) template(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch len(segs) {
	case 2:
		s.mu.Lock()
		phone := s.phones[segs[1]]
		s.mu.Unlock()
		if phone {
			return "/{Version}/{Phone-Number-ID}"
		}
		return "/{Version}/{Media-ID}"
	case 3:
		return "/{Version}/{Phone-Number-ID}/" + segs[2]
	}
	return path // no such operation: the validator says so
}

func (s *Server) checkToken(r *http.Request) *graphapi.Error {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	token, expired := s.token, s.expired
	s.mu.Unlock()
	switch {
	case !ok || got == "":
		return &graphapi.Error{Message: "An active access token must be used to query information about the current user.", Type: "OAuthException", Code: graphapi.CodeAccessToken, HTTPStatus: http.StatusUnauthorized, FBTraceID: traceID()}
	case got != token:
		return &graphapi.Error{Message: "Invalid OAuth access token - Cannot parse access token", Type: "OAuthException", Code: graphapi.CodeAccessToken, HTTPStatus: http.StatusUnauthorized, FBTraceID: traceID()}
	case expired:
		return &graphapi.Error{Message: "Error validating access token: Session has expired.", Type: "OAuthException", Code: graphapi.CodeAccessToken, ErrorSubcode: 463, HTTPStatus: http.StatusUnauthorized, FBTraceID: traceID()}
	}
	return nil
}

func invalidParameter(details string) *graphapi.Error {
	return badRequest(graphapi.CodeInvalidParameter, "(#100) Invalid parameter", details)
}

// badRequest is a 400 Graph error with details.
func badRequest(code int, message, details string) *graphapi.Error {
	return &graphapi.Error{
		Message:    message,
		Type:       "OAuthException",
		Code:       code,
		ErrorData:  &graphapi.ErrorData{MessagingProduct: "whatsapp", Details: details},
		HTTPStatus: http.StatusBadRequest,
		FBTraceID:  traceID(),
	}
}

func noSuchObject(id string) *graphapi.Error {
	return &graphapi.Error{
		Message:      fmt.Sprintf("Unsupported request - method type: post. Object with ID '%s' does not exist, cannot be loaded due to missing permissions, or does not support this operation.", id),
		Type:         "GraphMethodException",
		Code:         graphapi.CodeInvalidParameter,
		ErrorSubcode: 33,
		HTTPStatus:   http.StatusBadRequest,
		FBTraceID:    traceID(),
	}
}

func writeGraphError(w http.ResponseWriter, e *graphapi.Error) {
	writeJSON(w, e.HTTPStatus, graphapi.ErrorDocument{Error: *e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// traceID is a random fbtrace_id.
func traceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newWamID is "wamid." and a random base64 id, as Meta's look.
func newWamID() string {
	b := make([]byte, 30)
	_, _ = rand.Read(b)
	return "wamid." + base64.StdEncoding.EncodeToString(b)
}

// newNumericID is a random 16-digit id (media, conversations).
func newNumericID() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(9e15))
	return strconv.FormatInt(n.Int64()+1e15, 10)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
