package transport_test

import (
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// A host that needs its plugin only now and then (the master, for
// registration) starts it on first use with Ensure, gets a new one after
// the old one died, and registers through it without any shard
// connection. The network's answers keep their identity across the
// process boundary.
func TestSupervisorEnsureAndRegistration(t *testing.T) {
	srv := network(t)
	logs := &logBuffer{t: t}
	s := &transport.Supervisor{Path: pluginBin, Log: slog.New(slog.NewJSONHandler(logs, nil))}
	t.Cleanup(func() { s.Kill() })
	exits := 0
	s.OnExit = func() { exits++ }
	if s.Running() || s.Pid() != 0 {
		t.Fatal("a plugin runs before first use")
	}
	tr, err := s.Ensure(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	first := s.Pid()
	if again, err := s.Ensure(ctxT(t)); err != nil || s.Pid() != first || again == nil {
		t.Fatalf("second Ensure started another plugin (pid %d, was %d): %v", s.Pid(), first, err)
	}

	res, err := tr.RequestCode(ctxT(t), transport.RegistrationRequest{CC: "1", Phone: "6315551234", Method: transport.MethodSMS, Cert: []byte("Acme")})
	if err != nil || res.VName != "Acme" || res.AlreadyRegistered {
		t.Fatalf("request code = %+v, %v", res, err)
	}
	regs := srv.Registrations()
	if len(regs) != 1 {
		t.Fatalf("network registrations: %+v", regs)
	}
	code := regs[0].Code
	if _, err := tr.RequestCode(ctxT(t), transport.RegistrationRequest{CC: "1", Phone: "6315551234", Method: transport.MethodSMS, Cert: []byte{0xff}}); !errors.Is(err, transport.ErrBadCert) {
		t.Errorf("bad cert: %v, want ErrBadCert", err)
	}

	// Kill the plugin the way a crash would; the next Ensure replaces it.
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "plugin seen exited", func() error {
		if s.Running() {
			return errors.New("still running")
		}
		return nil
	})
	tr, err = s.Ensure(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Pid() == first || exits != 1 {
		t.Fatalf("after a crash: pid %d (was %d), %d exits seen", s.Pid(), first, exits)
	}
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	if err := tr.VerifyCode(ctxT(t), transport.VerifyRequest{CC: "1", Phone: "6315551234", Code: wrong}); !errors.Is(err, transport.ErrBadCode) {
		t.Errorf("wrong code: %v, want ErrBadCode", err)
	}
	if err := tr.VerifyCode(ctxT(t), transport.VerifyRequest{CC: "1", Phone: "6315551234", Code: code}); err != nil {
		t.Errorf("right code: %v", err)
	}
	if err := tr.VerifyCode(ctxT(t), transport.VerifyRequest{CC: "1", Phone: "6315551234", Code: code}); !errors.Is(err, transport.ErrNoCode) {
		t.Errorf("code used twice: %v, want ErrNoCode", err)
	}
	if !srv.Registrations()[0].Verified {
		t.Error("the network did not record the verification")
	}
	pid := s.Pid()
	if !s.Kill() || measure.Running(pid) {
		t.Errorf("plugin %d still alive after Kill", pid)
	}
}
