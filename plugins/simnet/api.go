package simnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Info is what GET /v1/info returns.
type Info struct {
	Name          string   `json:"name"`
	Version       string   `json:"version"`
	KeepaliveMS   int64    `json:"keepalive_ms"`
	StatusDelayMS int64    `json:"status_delay_ms"`
	Listen        []string `json:"listen"` // plugin (TCP) addresses
	HTTP          []string `json:"http"`   // API addresses
}

// Info describes the network and where it listens.
func (s *Server) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := Info{
		Name: "simnet", Version: ProtocolVersion,
		KeepaliveMS: s.cfg.Keepalive.Milliseconds(), StatusDelayMS: s.cfg.StatusDelay.Milliseconds(),
		Listen: []string{}, HTTP: []string{},
	}
	for _, ln := range s.listeners {
		in.Listen = append(in.Listen, ln.Addr().String())
	}
	for _, a := range s.apis {
		in.HTTP = append(in.HTTP, a.addr)
	}
	return in
}

// httpServer is one API listener.
type httpServer struct {
	addr string
	srv  *http.Server
}

// Close stops the API server, letting requests in flight finish briefly.
func (h *httpServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("simnet: stop API on %s: %w", h.addr, err)
	}
	return nil
}

// ServeAPI serves the HTTP API on ln until Close; it returns nil once the
// server is closed.
func (s *Server) ServeAPI(ln net.Listener) error {
	h := &httpServer{addr: ln.Addr().String(), srv: &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
	}}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("simnet: server closed")
	}
	s.apis = append(s.apis, h)
	s.mu.Unlock()
	s.log.Info("serving the HTTP API", "addr", h.addr)
	if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("simnet: API on %s: %w", h.addr, err)
	}
	return nil
}

// Handler returns the HTTP API (see the package documentation).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Info())
	})
	mux.HandleFunc("GET /v1/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]Interval{"connections": s.Connections()})
	})
	mux.HandleFunc("GET /v1/violations", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Violations())
	})
	mux.HandleFunc("GET /v1/shards", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]ShardState{"shards": s.Shards()})
	})
	mux.HandleFunc("GET /v1/messages", func(w http.ResponseWriter, r *http.Request) {
		var f MessageFilter
		if v := r.URL.Query().Get("shard"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Errorf("shard %q: %w", v, err))
				return
			}
			f.Shard = &n
		}
		f.To = r.URL.Query().Get("to")
		writeJSON(w, http.StatusOK, map[string][]Received{"messages": s.Messages(f)})
	})
	mux.HandleFunc("GET /v1/messages/count", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]int{"count": s.MessageCount()})
	})
	// The registration codes the network issued: it stands in for the
	// SMS or voice call. Filter with ?cc=&phone_number=.
	mux.HandleFunc("GET /v1/registrations", func(w http.ResponseWriter, r *http.Request) {
		cc, phone := r.URL.Query().Get("cc"), r.URL.Query().Get("phone_number")
		out := []Registration{}
		for _, reg := range s.Registrations() {
			if (cc == "" || reg.CC == cc) && (phone == "" || reg.PhoneNumber == phone) {
				out = append(out, reg)
			}
		}
		writeJSON(w, http.StatusOK, map[string][]Registration{"registrations": out})
	})
	mux.HandleFunc("POST /v1/inbound", func(w http.ResponseWriter, r *http.Request) {
		id, delivered, ok := s.injectRequest(w, r)
		if ok {
			writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "delivered": delivered})
		}
	})
	// A status for a received message, with conversation, pricing and
	// errors as the original's callbacks carried them (StatusInjection).
	mux.HandleFunc("POST /v1/statuses", func(w http.ResponseWriter, r *http.Request) {
		var in StatusInjection
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decode status: %w", err))
			return
		}
		if err := s.InjectStatus(in); err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, ErrUnknownMessage) {
				code = http.StatusNotFound
			}
			writeError(w, code, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]bool{"ok": true})
	})
	mux.HandleFunc("POST /v1/unreachable", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Number string `json:"number"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decode: %w", err))
			return
		}
		if err := s.SetUnreachable(in.Number); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	s.accountAPI(mux)
	s.restRoutes(mux)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
