package graphtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// control serves the test control API under /_test/ (no token: it is the
// test's side of the server, never Meta's):
//
//	GET    /_test/state       everything recorded (State)
//	GET    /_test/violations  sends breaking one sender per shard (Violations)
//	POST   /_test/reset       forget requests, messages, webhooks and faults
//	POST   /_test/faults      add a Fault (JSON); DELETE clears them
//	POST   /_test/token       {"expire":true} or {"token":"..."}
//	POST   /_test/limits      {"throughput":5,"pair_interval_ms":100}
//	POST   /_test/statuses    {"statuses":["sent","delivered"]}
//	POST   /_test/fail        {"count":1,"code":131026,"to":""}: failed statuses
//	POST   /_test/inbound     an Inbound message (JSON) → {"id": wamid}
//	POST   /_test/media?phone=&type=  raw bytes → MediaInfo (for inbound media)
//	POST   /_test/webhook_url {"url":"..."}
//	GET    /_test/codes       the verification codes issued, by phone
func (s *Server) control(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		return
	}
	decode := func(v any) bool {
		if err := json.Unmarshal(body, v); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("the body: %v", err)})
			return false
		}
		return true
	}
	ok := map[string]bool{"ok": true}
	switch r.Method + " " + r.URL.Path {
	case "GET /_test/state":
		writeJSON(w, http.StatusOK, s.Snapshot())
	case "GET /_test/violations":
		writeJSON(w, http.StatusOK, s.Violations())
	case "GET /_test/codes":
		writeJSON(w, http.StatusOK, s.Snapshot().Codes)
	case "POST /_test/reset":
		s.Reset()
		writeJSON(w, http.StatusOK, ok)
	case "POST /_test/faults":
		var f Fault
		if decode(&f) {
			s.AddFault(f)
			writeJSON(w, http.StatusOK, ok)
		}
	case "DELETE /_test/faults":
		s.ClearFaults()
		writeJSON(w, http.StatusOK, ok)
	case "POST /_test/token":
		var t struct {
			Expire bool   `json:"expire"`
			Token  string `json:"token"`
		}
		if decode(&t) {
			if t.Expire {
				s.ExpireToken()
			}
			if t.Token != "" {
				s.SetToken(t.Token)
			}
			writeJSON(w, http.StatusOK, ok)
		}
	case "POST /_test/limits":
		var l struct {
			Throughput     float64 `json:"throughput"`
			PairIntervalMS int64   `json:"pair_interval_ms"`
		}
		if decode(&l) {
			s.SetLimits(l.Throughput, time.Duration(l.PairIntervalMS)*time.Millisecond)
			writeJSON(w, http.StatusOK, ok)
		}
	case "POST /_test/statuses":
		var st struct {
			Statuses []string `json:"statuses"`
		}
		if decode(&st) {
			s.SetStatuses(st.Statuses)
			writeJSON(w, http.StatusOK, ok)
		}
	case "POST /_test/fail":
		var f struct {
			Count int    `json:"count"`
			Code  int    `json:"code"`
			To    string `json:"to"`
		}
		if decode(&f) {
			if f.Count <= 0 || f.Code == 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "count and code are required"})
				return
			}
			s.FailDeliveries(f.Count, f.Code, f.To)
			writeJSON(w, http.StatusOK, ok)
		}
	case "POST /_test/inbound":
		var in Inbound
		if decode(&in) {
			id, err := s.InjectInbound(in)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"id": id})
		}
	case "POST /_test/media":
		phone := r.URL.Query().Get("phone")
		if phone == "" {
			phone = s.cfg.PhoneNumberIDs[0]
		}
		typ := r.URL.Query().Get("type")
		if typ == "" {
			typ = r.Header.Get("Content-Type")
		}
		writeJSON(w, http.StatusOK, s.PutMedia(phone, typ, body))
	case "POST /_test/webhook_url":
		var u struct {
			URL string `json:"url"`
		}
		if decode(&u) {
			s.SetWebhookURL(u.URL)
			writeJSON(w, http.StatusOK, ok)
		}
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such control call: " + r.Method + " " + r.URL.Path})
	}
}
