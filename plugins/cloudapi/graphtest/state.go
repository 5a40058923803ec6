package graphtest

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// State is everything the server saw and did, for tests.
type State struct {
	Requests      []*Request                `json:"requests"`
	Messages      []Message                 `json:"messages"`
	Statuses      []StatusSent              `json:"statuses"`
	Inbound       []InboundSent             `json:"inbound"`
	Deliveries    []Delivery                `json:"deliveries"`
	Media         []MediaInfo               `json:"media"`
	Registrations []Registration            `json:"registrations"`
	Reads         []Read                    `json:"reads"`
	Profiles      map[string]map[string]any `json:"profiles"`
	// Codes are the verification codes request_code issued, by phone.
	Codes map[string]string `json:"codes"`
	// Pins are the two-step verification pins set, by phone.
	Pins map[string]string `json:"pins"`
	// SelfCheck lists webhooks of ours that did not fit the description
	// (must stay empty).
	SelfCheck []string `json:"self_check"`

	media map[string]*media
}

func (st *State) init() {
	st.Profiles = map[string]map[string]any{}
	st.Codes = map[string]string{}
	st.Pins = map[string]string{}
	st.media = map[string]*media{}
}

// Request is one Graph API request as it arrived and how it was answered.
type Request struct {
	Seq    int64  `json:"seq"`
	Method string `json:"method"`
	Path   string `json:"path"`
	// Node, Shard, Epoch: the X-Multiconnect-* headers (HasSender when sent).
	HasSender bool   `json:"has_sender"`
	Node      string `json:"node,omitempty"`
	Shard     int    `json:"shard"`
	Epoch     uint64 `json:"epoch"`
	// Sent is when the sender let the request go (X-Multiconnect-Sent,
	// Unix nanoseconds): with Start it tells the sender's pacing from
	// delays on the way or in the server.
	Sent  time.Time `json:"sent,omitempty"`
	Start time.Time `json:"start"`
	// End is when the answer was written or the connection cut (zero while
	// the request is being served).
	End    time.Time `json:"end"`
	Status int       `json:"status"`         // HTTP status; 0 when cut
	Code   int       `json:"code,omitempty"` // the Graph error code answered
	Fault  string    `json:"fault,omitempty"`
	Body   string    `json:"body,omitempty"`
}

// Message is an accepted send.
type Message struct {
	WamID  string          `json:"wamid"`
	Phone  string          `json:"phone"`
	To     string          `json:"to"`
	Type   string          `json:"type"`
	Opaque string          `json:"biz_opaque_callback_data,omitempty"`
	Body   json.RawMessage `json:"body"`
	Node   string          `json:"node,omitempty"`
	Shard  int             `json:"shard"`
	Epoch  uint64          `json:"epoch"`
	At     time.Time       `json:"at"`
	// Request is the Seq of the request that carried it.
	Request int64 `json:"request"`
}

// StatusSent is a status webhook the server queued.
type StatusSent struct {
	WamID  string `json:"wamid"`
	Status string `json:"status"`
	To     string `json:"to"`
	Opaque string `json:"biz_opaque_callback_data,omitempty"`
	Code   int    `json:"code,omitempty"` // the error of a failed status
}

// InboundSent is an injected inbound message.
type InboundSent struct {
	WamID string `json:"wamid"`
	Phone string `json:"phone"`
	From  string `json:"from"`
	Type  string `json:"type"`
}

// Delivery is one webhook POST attempt.
type Delivery struct {
	Webhook   int64     `json:"webhook"` // the webhook's sequence number
	Contact   string    `json:"contact"`
	Kind      string    `json:"kind"` // "status:sent", "message:text"...
	Attempt   int       `json:"attempt"`
	At        time.Time `json:"at"`
	Status    int       `json:"status,omitempty"`
	Error     string    `json:"error,omitempty"`
	Delivered bool      `json:"delivered"`
	GaveUp    bool      `json:"gave_up,omitempty"`
}

// Registration is a registration or verification call.
type Registration struct {
	Phone string          `json:"phone"`
	Op    string          `json:"op"` // register, deregister, request_code, verify_code, two_step
	Body  json.RawMessage `json:"body,omitempty"`
	OK    bool            `json:"ok"`
	At    time.Time       `json:"at"`
}

// Read is a mark-as-read call.
type Read struct {
	Phone     string    `json:"phone"`
	MessageID string    `json:"message_id"`
	Typing    bool      `json:"typing"`
	Known     bool      `json:"known"` // an inbound message the server sent
	At        time.Time `json:"at"`
}

// record notes a request's arrival.
func (s *Server) record(r *http.Request, body []byte, start time.Time) *Request {
	req := &Request{Method: r.Method, Path: r.URL.Path, Start: start}
	if len(body) > 0 && len(body) < 64<<10 && !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		req.Body = string(body)
	}
	if node := r.Header.Get("X-Multiconnect-Node"); node != "" {
		req.HasSender, req.Node = true, node
		req.Shard, _ = strconv.Atoi(r.Header.Get("X-Multiconnect-Shard"))
		req.Epoch, _ = strconv.ParseUint(r.Header.Get("X-Multiconnect-Epoch"), 10, 64)
		if ns, err := strconv.ParseInt(r.Header.Get("X-Multiconnect-Sent"), 10, 64); err == nil {
			req.Sent = time.Unix(0, ns)
		}
	}
	s.mu.Lock()
	s.seq++
	req.Seq = s.seq
	s.st.Requests = append(s.st.Requests, req)
	s.mu.Unlock()
	return req
}

// Snapshot copies the state.
func (s *Server) Snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Requests = make([]*Request, len(s.st.Requests))
	for i, r := range s.st.Requests {
		c := *r
		st.Requests[i] = &c
	}
	st.Messages = append([]Message(nil), s.st.Messages...)
	st.Statuses = append([]StatusSent(nil), s.st.Statuses...)
	st.Inbound = append([]InboundSent(nil), s.st.Inbound...)
	st.Deliveries = append([]Delivery(nil), s.st.Deliveries...)
	st.Registrations = append([]Registration(nil), s.st.Registrations...)
	st.Reads = append([]Read(nil), s.st.Reads...)
	st.SelfCheck = append([]string(nil), s.st.SelfCheck...)
	st.Media = nil
	for _, m := range s.st.media {
		st.Media = append(st.Media, m.info())
	}
	sort.Slice(st.Media, func(i, j int) bool { return st.Media[i].Created.Before(st.Media[j].Created) })
	st.Profiles = map[string]map[string]any{}
	for k, v := range s.st.Profiles {
		p := map[string]any{}
		for f, x := range v {
			p[f] = x
		}
		st.Profiles[k] = p
	}
	st.Codes, st.Pins = map[string]string{}, map[string]string{}
	for k, v := range s.st.Codes {
		st.Codes[k] = v
	}
	for k, v := range s.st.Pins {
		st.Pins[k] = v
	}
	st.media = nil
	return st
}

// Reset forgets what was recorded (requests, messages, webhooks, faults);
// media, profiles, codes and pins stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Requests, s.st.Messages, s.st.Statuses, s.st.Inbound = nil, nil, nil, nil
	s.st.Deliveries, s.st.Registrations, s.st.Reads, s.st.SelfCheck = nil, nil, nil, nil
	s.faults, s.failNext = nil, nil
	s.lastToPair = map[string]time.Time{}
	s.resetLimitersLocked()
}

// Violations are sends that break the one-sender-per-shard rule.
type Violations struct {
	Count int `json:"count"`
	// Overlaps: two nodes sent for one shard at overlapping times.
	Overlaps []Overlap `json:"overlaps"`
	// StaleEpochs: a send of an older epoch arrived after one of a newer.
	StaleEpochs []Stale `json:"stale_epochs"`
}

// Overlap is a pair of send requests of one shard from two nodes whose
// [Start, End) intervals share a moment.
type Overlap struct {
	Shard int     `json:"shard"`
	A     Request `json:"a"`
	B     Request `json:"b"`
}

// Stale is a send of an older epoch after one of a newer.
type Stale struct {
	Shard int     `json:"shard"`
	Newer Request `json:"newer"`
	Older Request `json:"older"`
}

// Violations computes the violations from the recorded send requests
// (POST .../messages with the sender headers), answered or not.
func (s *Server) Violations() Violations {
	st := s.Snapshot()
	var sends []*Request
	for _, r := range st.Requests {
		if r.HasSender && r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/messages") {
			sends = append(sends, r)
		}
	}
	now := time.Now()
	end := func(r *Request) time.Time {
		if r.End.IsZero() {
			return now
		}
		return r.End
	}
	v := Violations{Overlaps: []Overlap{}, StaleEpochs: []Stale{}}
	newest := map[int]*Request{} // shard → the highest epoch seen so far, by arrival
	for i, a := range sends {
		for _, b := range sends[i+1:] {
			if a.Shard == b.Shard && a.Node != b.Node && a.Start.Before(end(b)) && b.Start.Before(end(a)) {
				v.Overlaps = append(v.Overlaps, Overlap{Shard: a.Shard, A: *a, B: *b})
			}
		}
		if n, ok := newest[a.Shard]; ok && a.Epoch < n.Epoch {
			v.StaleEpochs = append(v.StaleEpochs, Stale{Shard: a.Shard, Newer: *n, Older: *a})
		}
		if n, ok := newest[a.Shard]; !ok || a.Epoch > n.Epoch {
			newest[a.Shard] = a
		}
	}
	v.Count = len(v.Overlaps) + len(v.StaleEpochs)
	return v
}

// Fault modes.
type Mode string

const (
	// ModeError answers Code (a Graph error) or a bare HTTPStatus.
	ModeError Mode = "error"
	// ModeLatency only delays (LatencyMS), then serves the request.
	ModeLatency Mode = "latency"
	// ModeTimeout holds the request HoldMS (past the client's timeout);
	// Processed: served first, the answer written if the client is still
	// there (else lost); not Processed: the connection is cut after the hold.
	ModeTimeout Mode = "timeout"
	// ModeCut closes the connection after reading the body, without an
	// answer, having served the request (Processed) or not.
	ModeCut Mode = "cut"
)

// Fault is an injected misbehaviour for matching requests.
type Fault struct {
	Mode Mode `json:"mode,omitempty"` // default error when Code or HTTPStatus is set, else latency
	// Method and Path (a substring of the path, e.g. "/messages") choose
	// the requests; empty matches every Graph request.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Count is how many requests it applies to (0: no limit); Fraction,
	// when set, is the chance it applies to each matching request.
	Count    int     `json:"count,omitempty"`
	Fraction float64 `json:"fraction,omitempty"`
	// Code is the Graph error code to answer (1, 2, 100, 131000, 130429,
	// 131056, 131009, 131026, 131047, 190...); HTTPStatus overrides its
	// usual status; HTTPStatus alone answers a bare non-Graph error.
	Code       int    `json:"code,omitempty"`
	HTTPStatus int    `json:"http_status,omitempty"`
	Message    string `json:"message,omitempty"`
	LatencyMS  int64  `json:"latency_ms,omitempty"`
	HoldMS     int64  `json:"hold_ms,omitempty"`
	Processed  bool   `json:"processed,omitempty"`
}

func (f *Fault) mode() Mode {
	switch {
	case f.Mode != "":
		return f.Mode
	case f.Code != 0 || f.HTTPStatus != 0:
		return ModeError
	}
	return ModeLatency
}

// codeStatus is the HTTP status Meta answers an error code with.
func codeStatus(code int) int {
	switch code {
	case graphapi.CodeUnknown, graphapi.CodeService, graphapi.CodeSomethingWrong:
		return http.StatusInternalServerError
	case graphapi.CodeAccessToken:
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
}

var codeMessages = map[int]string{
	graphapi.CodeUnknown:            "An unknown error occurred",
	graphapi.CodeService:            "Service temporarily unavailable",
	graphapi.CodeTooManyCalls:       "(#4) Application request limit reached",
	graphapi.CodeInvalidParameter:   "(#100) Invalid parameter",
	graphapi.CodeAccessToken:        "Error validating access token: Session has expired.",
	graphapi.CodeRateLimitHit:       "(#80007) Rate limit issues",
	graphapi.CodeThroughput:         "(#130429) Rate limit hit",
	graphapi.CodeSomethingWrong:     "(#131000) Something went wrong",
	graphapi.CodeRecipientNotValid:  "(#131009) Parameter value is not valid",
	graphapi.CodeMessageUndelivered: "(#131026) Message undeliverable",
	graphapi.CodeReengagement:       "(#131047) Re-engagement message",
	graphapi.CodeUnsupportedType:    "(#131051) Unsupported message type",
	graphapi.CodePairRate:           "(#131056) (Business Account, Consumer Account) pair rate limit hit",
}

// graphError is the error a ModeError fault answers (nil: a bare status).
func (f *Fault) graphError() *graphapi.Error {
	if f.Code == 0 {
		return nil
	}
	e := &graphapi.Error{Code: f.Code, Message: f.Message, HTTPStatus: f.HTTPStatus, Type: "OAuthException", FBTraceID: traceID()}
	if e.Message == "" {
		e.Message = codeMessages[f.Code]
		if e.Message == "" {
			e.Message = "(#" + strconv.Itoa(f.Code) + ") injected error"
		}
	}
	if e.HTTPStatus == 0 {
		e.HTTPStatus = codeStatus(f.Code)
	}
	if f.Code >= 130000 || f.Code == graphapi.CodeInvalidParameter {
		e.ErrorData = &graphapi.ErrorData{MessagingProduct: "whatsapp", Details: "injected by graphtest"}
	}
	return e
}

// AddFault adds a fault; the first matching fault with requests left
// applies to a request.
func (s *Server) AddFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

func (s *Server) takeFault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if (f.Method != "" && !strings.EqualFold(f.Method, r.Method)) || !strings.Contains(r.URL.Path, f.Path) {
			continue
		}
		if f.Fraction > 0 && rand.Float64() >= f.Fraction {
			continue
		}
		c := *f
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return &c
	}
	return nil
}

// failRule makes the next accepted messages fail after "sent".
type failRule struct {
	To    string // "" any recipient
	Count int
	Code  int
}

// FailDeliveries makes the next count accepted messages (to to, or to
// anyone when empty) get a "failed" status with the given error code
// after "sent", instead of delivered and read.
func (s *Server) FailDeliveries(count, code int, to string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, failRule{To: to, Count: count, Code: code})
}

// ExpireToken makes every request fail with 190 until SetToken.
func (s *Server) ExpireToken() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expired = true
}

// SetToken sets a valid access token (and ends an expiry).
func (s *Server) SetToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token, s.expired = token, false
}

// SetLimits changes the throughput (messages/s) and pair interval.
func (s *Server) SetLimits(throughput float64, pair time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Throughput, s.cfg.PairInterval = throughput, pair
	s.resetLimitersLocked()
}

// SetStatuses sets the statuses sent for each accepted message.
func (s *Server) SetStatuses(statuses []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Statuses = append([]string{}, statuses...)
}
