package simnet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // profile photos are JPEG or PNG
	_ "image/png"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The account-level settings: the profile's About text and photo, the
// business profile and two-step verification. The network records what it
// was told and shows it on its HTTP API (GET /v1/account/settings, and the
// photo itself at GET /v1/account/photo, the link the API answers for
// ?format=link), so a test can see that a setting reached it.

// AccountFrame carries one account op (transport.Op*) and its JSON body;
// the reply carries the op's result.
type AccountFrame struct {
	Op   string          `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
}

// accountState is guarded by Server.mu.
type accountState struct {
	about    string
	photo    *transport.ProfilePhoto
	business transport.BusinessProfile
	pin      string // "" when two-step verification is off
	updates  int
}

// AccountPhoto describes the stored photo on the API (not its bytes).
type AccountPhoto struct {
	ContentType string `json:"content_type"`
	Size        int    `json:"size"`
	SHA256      string `json:"sha256"`
	Width       int    `json:"width"`
	Height      int    `json:"height"`
}

// AccountSettings is GET /v1/account/settings. The PIN itself is not
// shown, only whether one is set.
type AccountSettings struct {
	About           string                    `json:"about"`
	Photo           *AccountPhoto             `json:"photo"`
	BusinessProfile transport.BusinessProfile `json:"business_profile"`
	TwoStep         bool                      `json:"two_step"`
	// Updates counts the account ops the network applied.
	Updates int `json:"updates"`
}

// Network-side limits: the network keeps its own, so a host that skipped
// validation still cannot store what it would not.
const (
	netMaxAbout = 139
	// A photo travels base64 in one frame (maxFrame, 4 MiB).
	netMaxPhoto = 2 << 20
)

// AccountSettings returns what the network holds for the account.
func (s *Server) AccountSettings() AccountSettings {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.account
	out := AccountSettings{About: a.about, BusinessProfile: a.business, TwoStep: a.pin != "", Updates: a.updates}
	if p := a.photo; p != nil {
		sum := sha256.Sum256(p.Data)
		cfg, _, _ := image.DecodeConfig(bytes.NewReader(p.Data))
		out.Photo = &AccountPhoto{ContentType: p.ContentType, Size: len(p.Data), SHA256: hex.EncodeToString(sum[:]),
			Width: cfg.Width, Height: cfg.Height}
	}
	return out
}

// applyAccountLocked applies one account op; a refused value is a
// *RegisterError with RejectInvalid.
func (s *Server) applyAccountLocked(op string, body []byte) (any, error) {
	bad := func(format string, args ...any) error {
		return &RegisterError{RejectInvalid, fmt.Sprintf(format, args...)}
	}
	decode := func(v any) error {
		if err := json.Unmarshal(body, v); err != nil {
			return bad("%s: body: %v", op, err)
		}
		return nil
	}
	a := &s.account
	var result any = struct{}{}
	switch op {
	case transport.OpSetProfileAbout:
		var in transport.ProfileAbout
		if err := decode(&in); err != nil {
			return nil, err
		}
		if n := utf8.RuneCountInString(in.Text); n == 0 || n > netMaxAbout {
			return nil, bad("about: %d characters, the network takes 1 to %d", n, netMaxAbout)
		}
		a.about = in.Text
	case transport.OpSetProfilePhoto:
		var in transport.ProfilePhoto
		if err := decode(&in); err != nil {
			return nil, err
		}
		if len(in.Data) == 0 || len(in.Data) > netMaxPhoto {
			return nil, bad("photo: %d bytes, the network takes 1 to %d", len(in.Data), netMaxPhoto)
		}
		if _, format, err := image.DecodeConfig(bytes.NewReader(in.Data)); err != nil || (format != "jpeg" && format != "png") {
			return nil, bad("photo: not a JPEG or PNG image")
		}
		a.photo = &in
		link := ""
		if len(s.apis) > 0 {
			link = "http://" + s.apis[0].addr + "/v1/account/photo"
		}
		result = transport.ProfilePhotoResult{Link: link}
	case transport.OpDeleteProfilePhoto:
		a.photo = nil
	case transport.OpSetBusinessProfile:
		var in transport.BusinessProfile
		if err := decode(&in); err != nil {
			return nil, err
		}
		if len(in.Websites) > 2 {
			return nil, bad("websites: %d, the network takes at most 2", len(in.Websites))
		}
		a.business = in
	case transport.OpSetTwoStep:
		var in transport.TwoStep
		if err := decode(&in); err != nil {
			return nil, err
		}
		if len(in.Pin) != 6 || !allDigits(in.Pin) {
			return nil, bad("pin: not 6 digits")
		}
		a.pin = in.Pin
	case transport.OpDeleteTwoStep:
		a.pin = ""
	default:
		return nil, bad("unknown account op %q", op)
	}
	a.updates++
	s.log.Info("account setting applied", "op", op)
	return result, nil
}

// accountLocked answers an account frame.
func (s *Server) accountLocked(c *conn, f Frame) {
	if f.Account == nil {
		c.out.push(Frame{Op: OpRejected, Seq: f.Seq, Error: RejectInvalid, Reason: "account without account"})
		return
	}
	res, err := s.applyAccountLocked(f.Account.Op, f.Account.Body)
	if err != nil {
		c.out.push(rejection(f.Seq, err))
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		c.out.push(rejection(f.Seq, err))
		return
	}
	c.out.push(Frame{Op: OpAccountDone, Seq: f.Seq, Account: &AccountFrame{Op: f.Account.Op, Body: b}})
}

// accountAPI adds the account's routes to the HTTP API.
func (s *Server) accountAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/account/settings", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.AccountSettings())
	})
	mux.HandleFunc("GET /v1/account/photo", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		p := s.account.photo
		s.mu.Unlock()
		if p == nil {
			writeError(w, http.StatusNotFound, errors.New("no profile photo"))
			return
		}
		w.Header().Set("Content-Type", p.ContentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(p.Data)))
		w.Write(p.Data)
	})
}

// Account sends one account op over c and returns its result. It needs no
// connect.
func (c *Conn) Account(ctx context.Context, op string, body []byte) ([]byte, error) {
	f, err := c.request(ctx, Frame{Op: OpAccount, Account: &AccountFrame{Op: op, Body: body}})
	if err != nil {
		return nil, err
	}
	switch {
	case f.Op == OpAccountDone && f.Account != nil:
		return f.Account.Body, nil
	case f.Op == OpRejected:
		return nil, fmt.Errorf("%w: %s", transport.ErrInvalidValue, f.Reason)
	}
	return nil, fmt.Errorf("account %s: unexpected reply %q", op, f.Op)
}

// account performs an account op for Transport.Call over a short
// connection of its own, like RequestCode.
func (t *Transport) account(ctx context.Context, op string, body []byte) ([]byte, error) {
	if len(body) == 0 {
		body = []byte("{}")
	}
	c, err := Dial(ctx, t.addr, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer c.Abort()
	res, err := c.Account(ctx, op, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return res, nil
}
