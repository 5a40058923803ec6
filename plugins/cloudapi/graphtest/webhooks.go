package graphtest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

// Sign is the X-Hub-Signature-256 value of body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// webhook is one payload waiting for delivery.
type webhook struct {
	seq       int64
	kind      string
	body      []byte
	notBefore time.Time
}

// queue holds one contact's webhooks: delivered one at a time, in order,
// each retried until acknowledged or given up.
type queue struct {
	mu    sync.Mutex
	items []webhook
	wake  chan struct{}
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// enqueue validates a payload against the description (our own webhooks
// must fit it too) and queues it for its contact.
func (s *Server) enqueue(contact, kind string, payload any, notBefore time.Time) {
	body, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("graphtest: encoding a webhook: %v", err))
	}
	if err := metaspec.ValidateWebhook(body); err != nil {
		s.log.Error("our own webhook does not fit the description", "kind", kind, "err", err)
		s.mu.Lock()
		s.st.SelfCheck = append(s.st.SelfCheck, kind+": "+err.Error())
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.seq++
	q := s.queues[contact]
	if q == nil {
		q = &queue{wake: make(chan struct{}, 1)}
		s.queues[contact] = q
		s.wg.Add(1)
		go s.deliver(contact, q)
	}
	q.mu.Lock()
	q.items = append(q.items, webhook{seq: s.seq, kind: kind, body: body, notBefore: notBefore})
	q.mu.Unlock()
	q.signal()
}

// deliver sends a contact's webhooks in order until the server closes.
func (s *Server) deliver(contact string, q *queue) {
	defer s.wg.Done()
	for {
		q.mu.Lock()
		var next *webhook
		if len(q.items) > 0 {
			w := q.items[0]
			next = &w
		}
		q.mu.Unlock()
		if next == nil {
			select {
			case <-q.wake:
				continue
			case <-s.stop:
				return
			}
		}
		if !s.sleep(time.Until(next.notBefore)) {
			return
		}
		if !s.deliverOne(contact, next) {
			return
		}
		q.mu.Lock()
		q.items = q.items[1:]
		q.mu.Unlock()
	}
}

// sleep waits d; false when the server closes first.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.stop:
		return false
	}
}

// deliverOne posts a webhook until it is acknowledged (2xx) or RetryFor
// has passed since the first attempt; false when the server closes.
func (s *Server) deliverOne(contact string, wh *webhook) bool {
	first := time.Now()
	backoff := s.cfg.RetryMin
	for attempt := 1; ; attempt++ {
		d := Delivery{Webhook: wh.seq, Contact: contact, Kind: wh.kind, Attempt: attempt, At: time.Now()}
		status, err := s.post(wh.body)
		d.Status = status
		switch {
		case err != nil:
			d.Error = err.Error()
		case status/100 == 2:
			d.Delivered = true
		default:
			d.Error = "HTTP " + strconv.Itoa(status)
		}
		giveUp := !d.Delivered && time.Since(first)+backoff > s.cfg.RetryFor
		d.GaveUp = giveUp
		s.mu.Lock()
		s.st.Deliveries = append(s.st.Deliveries, d)
		s.mu.Unlock()
		if d.Delivered || giveUp {
			if giveUp {
				s.log.Warn("webhook given up", "contact", contact, "kind", wh.kind, "attempts", attempt)
			}
			return true
		}
		if !s.sleep(backoff) {
			return false
		}
		backoff = min(backoff*2, s.cfg.RetryMax)
	}
}

func (s *Server) post(body []byte) (int, error) {
	s.mu.Lock()
	target := s.cfg.WebhookURL
	s.mu.Unlock()
	if target == "" {
		return 0, fmt.Errorf("no webhook URL configured")
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WebhookTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", Sign(s.cfg.AppSecret, body))
	req.Header.Set("User-Agent", "facebookexternalua")
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// SetWebhookURL changes where webhooks go (queued ones included).
func (s *Server) SetWebhookURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.WebhookURL = u
}

// envelope wraps a change value in the webhook payload.
func (s *Server) envelope(phone string, value map[string]any) map[string]any {
	value["messaging_product"] = "whatsapp"
	value["metadata"] = map[string]any{"display_phone_number": phone, "phone_number_id": phone}
	return map[string]any{
		"object": "whatsapp_business_account",
		"entry": []any{map[string]any{
			"id":      s.cfg.WABAID,
			"changes": []any{map[string]any{"field": "messages", "value": value}},
		}},
	}
}

// queueStatuses queues an accepted message's status webhooks: the given
// statuses in order, or "sent" then "failed" with failCode.
func (s *Server) queueStatuses(phone, to, wamid, opaque, typ string, statuses []string, failCode int) {
	category := "service"
	if typ == "template" {
		category = "utility"
	}
	conv := map[string]any{"id": randomHex(16), "origin": map[string]any{"type": category}}
	at := time.Now()
	if failCode != 0 {
		statuses = []string{"sent", "failed"}
	}
	for i, st := range statuses {
		status := map[string]any{
			"id":           wamid,
			"status":       st,
			"timestamp":    strconv.FormatInt(at.Unix(), 10),
			"recipient_id": digits(to),
		}
		if opaque != "" {
			status["biz_opaque_callback_data"] = opaque
		}
		if st == "failed" {
			status["errors"] = []any{map[string]any{
				"code":       failCode,
				"title":      codeTitle(failCode),
				"message":    codeTitle(failCode),
				"error_data": map[string]any{"details": "injected by graphtest"},
				"href":       "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
			}}
		} else {
			c := map[string]any{"id": conv["id"], "origin": conv["origin"]}
			if st == "sent" {
				c["expiration_timestamp"] = strconv.FormatInt(at.Add(24*time.Hour).Unix(), 10)
			}
			status["conversation"] = c
			status["pricing"] = map[string]any{"billable": true, "pricing_model": "PMP", "category": category}
		}
		s.mu.Lock()
		s.st.Statuses = append(s.st.Statuses, StatusSent{WamID: wamid, Status: st, To: to, Opaque: opaque, Code: failCode * boolInt(st == "failed")})
		s.mu.Unlock()
		s.enqueue(digits(to), "status:"+st, s.envelope(phone, map[string]any{"statuses": []any{status}}), at.Add(time.Duration(i)*s.cfg.StatusDelay))
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func codeTitle(code int) string {
	if m, ok := codeMessages[code]; ok {
		return m
	}
	return "Error " + strconv.Itoa(code)
}

// Inbound is a message a contact sends to a business number.
type Inbound struct {
	Phone string `json:"phone"` // the business number; default the first
	From  string `json:"from"`  // the contact's wa_id
	Name  string `json:"name"`  // the contact's profile name
	Type  string `json:"type"`  // text, image, location, interactive, ...
	// Content is the type's object (e.g. {"body":"hi"} for text), or a
	// whole message's extra fields when Type is empty (see Fields).
	Content json.RawMessage `json:"content,omitempty"`
	// Fields are more fields of the message (context, referral, errors...).
	Fields map[string]json.RawMessage `json:"fields,omitempty"`
}

// InjectInbound sends an inbound message webhook from a contact, in the
// description's shape (refused when it does not fit), and returns its wamid.
func (s *Server) InjectInbound(in Inbound) (string, error) {
	if in.Phone == "" {
		in.Phone = s.cfg.PhoneNumberIDs[0]
	}
	if !s.isPhone(in.Phone) {
		return "", fmt.Errorf("%s is not a phone number id of this server", in.Phone)
	}
	if in.From == "" || in.Type == "" {
		return "", fmt.Errorf("from and type are required")
	}
	if in.Name == "" {
		in.Name = "Contact " + in.From
	}
	wamid := newWamID()
	msg := map[string]any{
		"from":      in.From,
		"id":        wamid,
		"timestamp": strconv.FormatInt(time.Now().Unix(), 10),
		"type":      in.Type,
	}
	for k, v := range in.Fields {
		msg[k] = v
	}
	if len(in.Content) > 0 {
		msg[in.Type] = in.Content
	}
	value := map[string]any{
		"contacts": []any{map[string]any{"profile": map[string]any{"name": in.Name}, "wa_id": in.From}},
		"messages": []any{msg},
	}
	if in.Type == "system" { // system messages come without contacts
		delete(value, "contacts")
	}
	payload := s.envelope(in.Phone, value)
	body, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	if err := metaspec.ValidateWebhook(body); err != nil {
		return "", fmt.Errorf("the inbound message does not fit the description: %w", err)
	}
	s.mu.Lock()
	s.st.Inbound = append(s.st.Inbound, InboundSent{WamID: wamid, Phone: in.Phone, From: in.From, Type: in.Type})
	s.mu.Unlock()
	s.enqueue(in.From, "message:"+in.Type, payload, time.Now())
	return wamid, nil
}
