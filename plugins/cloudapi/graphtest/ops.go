package graphtest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// mediaDownloadPath is where media URLs point (Meta's are on
// lookaside.fbsbx.com/whatsapp_business/attachments/, also token-protected).
const mediaDownloadPath = "/whatsapp_business/attachments/"

// Errors of registration (Meta's codes).
const (
	codePinMismatch = 133005 // two-step verification PIN mismatch
	codeVerify      = 136025 // the verification code could not be verified
)

// serveOperation serves a validated request and returns the Graph error
// code it answered (0 on success).
func (s *Server) serveOperation(w http.ResponseWriter, r *http.Request, tmpl string, body []byte, req *Request) int {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	id := "" // the phone number or media id
	if len(segs) >= 2 {
		id = segs[1]
	}
	fail := func(e *graphapi.Error) int {
		writeGraphError(w, e)
		return e.Code
	}
	if strings.HasPrefix(tmpl, "/{Version}/{Phone-Number-ID}") && !s.isPhone(id) {
		return fail(noSuchObject(id))
	}
	var in map[string]any
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/json" && len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			return fail(invalidParameter("the body is not a JSON object"))
		}
	}
	str := func(k string) string { v, _ := in[k].(string); return v }
	ok := map[string]any{"success": true}

	switch r.Method + " " + tmpl {
	case "POST /{Version}/{Phone-Number-ID}/messages":
		return s.sendMessage(w, id, in, body, req)
	case "POST /{Version}/{Phone-Number-ID}/media":
		return s.upload(w, r, id, body)
	case "GET /{Version}/{Media-ID}":
		m := s.lookupMedia(id)
		if m == nil {
			return fail(noSuchObject(id))
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"messaging_product": "whatsapp",
			"id":                m.ID,
			"url":               "http://" + r.Host + mediaDownloadPath + "?mid=" + url.QueryEscape(m.ID) + "&hash=" + m.SHA256[:16],
			"mime_type":         m.MimeType,
			"sha256":            m.SHA256,
			"file_size":         strconv.Itoa(len(m.data)), // a string, as the description has it
		})
	case "DELETE /{Version}/{Media-ID}":
		s.mu.Lock()
		m := s.st.media[id]
		if m != nil && !m.Deleted {
			m.Deleted = true
		} else {
			m = nil
		}
		s.mu.Unlock()
		if m == nil {
			return fail(noSuchObject(id))
		}
		writeJSON(w, http.StatusOK, ok)
	case "POST /{Version}/{Phone-Number-ID}/register":
		s.mu.Lock()
		pin, set := s.st.Pins[id]
		good := !set || pin == str("pin")
		if good {
			s.st.Pins[id] = str("pin") // registering sets the two-step pin
		}
		s.st.Registrations = append(s.st.Registrations, Registration{Phone: id, Op: "register", Body: body, OK: good, At: time.Now()})
		s.mu.Unlock()
		if !good {
			return fail(badRequest(codePinMismatch, "(#133005) Two step verification PIN Mismatch", "The PIN does not match the two-step verification PIN of the number."))
		}
		writeJSON(w, http.StatusOK, ok)
	case "POST /{Version}/{Phone-Number-ID}/deregister":
		s.registration(id, "deregister", body, true)
		writeJSON(w, http.StatusOK, ok)
	case "POST /{Version}/{Phone-Number-ID}/request_code":
		n, _ := rand.Int(rand.Reader, big.NewInt(1e6))
		code := strconv.FormatInt(n.Int64()+1e6, 10)[1:]
		s.mu.Lock()
		s.st.Codes[id] = code
		s.mu.Unlock()
		s.registration(id, "request_code", body, true)
		writeJSON(w, http.StatusOK, ok)
	case "POST /{Version}/{Phone-Number-ID}/verify_code":
		s.mu.Lock()
		want, issued := s.st.Codes[id]
		s.mu.Unlock()
		good := issued && want == str("code")
		s.registration(id, "verify_code", body, good)
		if !good {
			return fail(badRequest(codeVerify, "(#136025) Code couldn't be verified", "The code does not match the last one requested."))
		}
		writeJSON(w, http.StatusOK, ok)
	case "POST /{Version}/{Phone-Number-ID}":
		if pin := str("pin"); pin != "" {
			s.mu.Lock()
			s.st.Pins[id] = pin
			s.mu.Unlock()
			s.registration(id, "two_step", body, true)
		}
		writeJSON(w, http.StatusOK, ok)
	case "GET /{Version}/{Phone-Number-ID}":
		writeJSON(w, http.StatusOK, map[string]any{
			"id":                   id,
			"display_phone_number": id,
			"verified_name":        "graphtest",
			"quality_rating":       "GREEN",
		})
	case "GET /{Version}/{Phone-Number-ID}/whatsapp_business_profile":
		s.mu.Lock()
		p := map[string]any{"messaging_product": "whatsapp"}
		for k, v := range s.st.Profiles[id] {
			p[k] = v
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"data": []any{p}})
	case "POST /{Version}/{Phone-Number-ID}/whatsapp_business_profile":
		s.mu.Lock()
		p := s.st.Profiles[id]
		if p == nil {
			p = map[string]any{}
			s.st.Profiles[id] = p
		}
		for k, v := range in {
			switch k {
			case "messaging_product":
			case "profile_picture_handle":
				// The photo is uploaded with the resumable upload API;
				// the profile then shows its URL.
				sum := sha256.Sum256([]byte(v.(string)))
				p["profile_picture_url"] = "http://" + r.Host + "/whatsapp_business/profile_photo/" + hex.EncodeToString(sum[:8])
				p[k] = v
			default:
				p[k] = v
			}
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, ok)
	default:
		return fail(invalidParameter("graphtest does not serve " + r.Method + " " + tmpl))
	}
	return 0
}

func (s *Server) isPhone(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phones[id]
}

func (s *Server) registration(phone, op string, body []byte, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Registrations = append(s.st.Registrations, Registration{Phone: phone, Op: op, Body: body, OK: ok, At: time.Now()})
}

// sendMessage serves POST /{phone}/messages: a read receipt, or a message
// under the number's throughput and the recipient's pair limit.
func (s *Server) sendMessage(w http.ResponseWriter, phone string, in map[string]any, body []byte, req *Request) int {
	str := func(k string) string { v, _ := in[k].(string); return v }
	now := time.Now()
	if str("status") == "read" {
		id := str("message_id")
		s.mu.Lock()
		known := false
		for _, m := range s.st.Inbound {
			known = known || m.WamID == id
		}
		s.st.Reads = append(s.st.Reads, Read{Phone: phone, MessageID: id, Typing: in["typing_indicator"] != nil, Known: known, At: now})
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"success": true})
		return 0
	}
	to, typ, opaque := str("to"), str("type"), str("biz_opaque_callback_data")

	s.mu.Lock()
	if lim := s.limiters[phone]; lim != nil && !lim.AllowN(now, 1) {
		s.mu.Unlock()
		e := (&Fault{Code: graphapi.CodeThroughput}).graphError()
		e.ErrorData.Details = "Message failed to send because there were too many messages sent from this phone number in a short period of time."
		writeGraphError(w, e)
		return e.Code
	}
	key := phone + " " + to
	if last, ok := s.lastToPair[key]; ok && s.cfg.PairInterval > 0 && now.Sub(last) < s.cfg.PairInterval {
		s.mu.Unlock()
		e := (&Fault{Code: graphapi.CodePairRate}).graphError()
		e.ErrorData.Details = "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time."
		writeGraphError(w, e)
		return e.Code
	}
	s.lastToPair[key] = now
	wamid := newWamID()
	s.st.Messages = append(s.st.Messages, Message{
		WamID: wamid, Phone: phone, To: to, Type: typ, Opaque: opaque, Body: append(json.RawMessage(nil), body...),
		Node: req.Node, Shard: req.Shard, Epoch: req.Epoch, At: now, Request: req.Seq,
	})
	failCode := 0
	for i := range s.failNext {
		f := &s.failNext[i]
		if f.Count > 0 && (f.To == "" || f.To == to) {
			f.Count--
			failCode = f.Code
			break
		}
	}
	statuses := append([]string(nil), s.cfg.Statuses...)
	s.mu.Unlock()

	s.queueStatuses(phone, to, wamid, opaque, typ, statuses, failCode)
	writeJSON(w, http.StatusOK, map[string]any{
		"messaging_product": "whatsapp",
		"contacts":          []any{map[string]any{"input": to, "wa_id": digits(to)}},
		"messages":          []any{map[string]any{"id": wamid}},
	})
	return 0
}

func digits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}

// media is a stored upload.
type media struct {
	ID       string
	Phone    string
	MimeType string
	SHA256   string
	Created  time.Time
	Deleted  bool
	data     []byte
}

// MediaInfo describes stored media (without its bytes).
type MediaInfo struct {
	ID       string    `json:"id"`
	Phone    string    `json:"phone"`
	MimeType string    `json:"mime_type"`
	SHA256   string    `json:"sha256"`
	Size     int       `json:"file_size"`
	Created  time.Time `json:"created"`
	Deleted  bool      `json:"deleted"`
}

func (m *media) info() MediaInfo {
	return MediaInfo{ID: m.ID, Phone: m.Phone, MimeType: m.MimeType, SHA256: m.SHA256, Size: len(m.data), Created: m.Created, Deleted: m.Deleted}
}

func (s *Server) lookupMedia(id string) *media {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.st.media[id]; m != nil && !m.Deleted {
		return m
	}
	return nil
}

// PutMedia stores media as if uploaded (inbound media for tests) and
// returns its id.
func (s *Server) PutMedia(phone, mimeType string, data []byte) MediaInfo {
	sum := sha256.Sum256(data)
	m := &media{ID: newNumericID(), Phone: phone, MimeType: mimeType, SHA256: hex.EncodeToString(sum[:]), Created: time.Now(), data: append([]byte(nil), data...)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.media[m.ID] = m
	return m.info()
}

// upload serves POST /{phone}/media (multipart: messaging_product, type,
// file).
func (s *Server) upload(w http.ResponseWriter, r *http.Request, phone string, body []byte) int {
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var data []byte
	var typ, partType string
	found := false
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			e := invalidParameter("the multipart body: " + err.Error())
			writeGraphError(w, e)
			return e.Code
		}
		b, _ := io.ReadAll(part)
		switch part.FormName() {
		case "file":
			data, found, partType = b, true, part.Header.Get("Content-Type")
		case "type":
			typ = string(b)
		}
	}
	if !found {
		e := invalidParameter("file is required")
		writeGraphError(w, e)
		return e.Code
	}
	if typ == "" {
		typ = partType
	}
	if typ == "" {
		e := invalidParameter("type is required (the file's MIME type)")
		writeGraphError(w, e)
		return e.Code
	}
	m := s.PutMedia(phone, typ, data)
	writeJSON(w, http.StatusOK, map[string]any{"id": m.ID})
	return 0
}

// download serves a media URL: the bytes, with the access token.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	if e := s.checkToken(r); e != nil {
		writeGraphError(w, e)
		return
	}
	m := s.lookupMedia(r.URL.Query().Get("mid"))
	if m == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", m.MimeType)
	w.Header().Set("Content-Length", strconv.Itoa(len(m.data)))
	_, _ = w.Write(m.data)
}
