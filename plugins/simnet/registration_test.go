package simnet

import (
	"errors"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// A registration over the wire protocol, as the plugin makes it: the code
// is listed on the HTTP API, a wrong code is refused and counted, the right
// one verifies the number once, and a second request for the same
// certificate is answered "already registered" without a new code.
func TestRegistrationCodes(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	api := httptest.NewServer(s.Handler())
	t.Cleanup(api.Close)
	c := dial(t, addr) // no connect: registration needs no shard

	list := func(query string) []Registration {
		t.Helper()
		var out struct{ Registrations []Registration }
		getJSON(t, api.URL+"/v1/registrations"+query, &out)
		return out.Registrations
	}
	if regs := list(""); len(regs) != 0 {
		t.Fatalf("fresh network lists %+v", regs)
	}

	req := RegistrationFrame{CC: "1", PhoneNumber: "6315551234", Method: "sms", Cert: []byte("Acme Widgets")}
	vname, registered, err := c.Register(ctxT(t), req)
	if err != nil || vname != "Acme Widgets" || registered {
		t.Fatalf("register = %q, %v, %v; want the cert's name, not registered", vname, registered, err)
	}
	other := RegistrationFrame{CC: "44", PhoneNumber: "7700900123", Method: "voice", Cert: []byte("Other")}
	if _, _, err := c.Register(ctxT(t), other); err != nil {
		t.Fatal(err)
	}
	regs := list("?cc=1&phone_number=6315551234")
	if len(regs) != 1 {
		t.Fatalf("filtered listing = %+v", regs)
	}
	reg := regs[0]
	if !regexp.MustCompile(`^[0-9]{6}$`).MatchString(reg.Code) || reg.Method != "sms" || reg.VName != "Acme Widgets" ||
		reg.Verified || reg.Requests != 1 || reg.RequestedAt == 0 {
		t.Fatalf("listing = %+v", reg)
	}
	if all := list(""); len(all) != 2 || all[0].CC != "1" || all[1].CC != "44" || all[1].Method != "voice" {
		t.Fatalf("listing in request order = %+v", all)
	}

	wrong := "000000"
	if reg.Code == wrong {
		wrong = "111111"
	}
	err = c.Verify(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "6315551234", Code: wrong})
	if !errors.Is(err, transport.ErrBadCode) {
		t.Fatalf("wrong code: %v, want ErrBadCode", err)
	}
	if r := list("?cc=1&phone_number=6315551234")[0]; r.Verified || r.BadAttempts != 1 {
		t.Fatalf("after a wrong code: %+v", r)
	}
	// The code of one number does not verify another.
	if list("?cc=44")[0].Code != reg.Code { // equal one time in a million
		if err := c.Verify(ctxT(t), RegistrationFrame{CC: "44", PhoneNumber: "7700900123", Code: reg.Code}); !errors.Is(err, transport.ErrBadCode) {
			t.Fatalf("another number's code: %v, want ErrBadCode", err)
		}
	}
	if err := c.Verify(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "6315551234", Code: reg.Code}); err != nil {
		t.Fatalf("right code: %v", err)
	}
	if r := list("?cc=1&phone_number=6315551234")[0]; !r.Verified || r.VerifiedAt == 0 || r.Code != reg.Code {
		t.Fatalf("after the right code: %+v", r)
	}
	// A code is used once.
	if err := c.Verify(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "6315551234", Code: reg.Code}); !errors.Is(err, transport.ErrNoCode) {
		t.Fatalf("code used twice: %v, want ErrNoCode", err)
	}
	if err := c.Verify(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "999", Code: "123456"}); !errors.Is(err, transport.ErrNoCode) {
		t.Fatalf("unknown number: %v, want ErrNoCode", err)
	}

	// Same number, same certificate: already registered, no new code.
	vname, registered, err = c.Register(ctxT(t), req)
	if err != nil || !registered || vname != "Acme Widgets" {
		t.Fatalf("second register = %q, %v, %v; want already registered", vname, registered, err)
	}
	if r := list("?cc=1&phone_number=6315551234")[0]; r.Requests != 1 || r.Code != reg.Code || !r.Verified {
		t.Fatalf("already registered issued a code: %+v", r)
	}
	// Another certificate for the number: a new registration.
	if _, registered, err = c.Register(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "6315551234", Method: "voice", Cert: []byte("New Owner")}); err != nil || registered {
		t.Fatalf("register for another cert: %v, registered %v", err, registered)
	}
	if r := list("?cc=1&phone_number=6315551234")[0]; r.Requests != 2 || r.Verified || r.VName != "New Owner" || r.Method != "voice" {
		t.Fatalf("after a request for another cert: %+v", r)
	}
}

// Certificates without a readable name and malformed requests are refused,
// and nothing is recorded for them.
func TestRegistrationRefused(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	c := dial(t, addr)
	for _, cert := range [][]byte{nil, []byte("   "), {0xff, 0xfe}, []byte("a\x00b")} {
		_, _, err := c.Register(ctxT(t), RegistrationFrame{CC: "1", PhoneNumber: "5550001", Method: "sms", Cert: cert})
		if !errors.Is(err, transport.ErrBadCert) {
			t.Errorf("cert %q: %v, want ErrBadCert", cert, err)
		}
	}
	for _, r := range []RegistrationFrame{
		{CC: "1234", PhoneNumber: "5550001", Method: "sms", Cert: []byte("x")},
		{CC: "1", PhoneNumber: "555-0001", Method: "sms", Cert: []byte("x")},
		{CC: "1", PhoneNumber: "5550001", Method: "fax", Cert: []byte("x")},
	} {
		_, _, err := c.Register(ctxT(t), r)
		var re *RejectedError
		if !errors.As(err, &re) || re.Kind != RejectInvalid {
			t.Errorf("%+v: %v, want an invalid rejection", r, err)
		}
		if errors.Is(err, transport.ErrBadCert) || errors.Is(err, transport.ErrBadCode) || errors.Is(err, transport.ErrNoCode) {
			t.Errorf("%+v: %v matches a specific transport error", r, err)
		}
	}
	if regs := s.Registrations(); len(regs) != 0 {
		t.Errorf("refused requests were recorded: %+v", regs)
	}
}
