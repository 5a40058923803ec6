package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/multiconnect/multiconnect/plugins/transport/proto"
)

// fakeImpl answers the registration calls with what the test sets; the
// embedded nil Transport panics on anything else.
type fakeImpl struct {
	Transport
	got     RegistrationRequest
	gotV    VerifyRequest
	res     RegistrationResult
	err     error
	verrErr error
}

func (f *fakeImpl) RequestCode(_ context.Context, r RegistrationRequest) (RegistrationResult, error) {
	f.got = r
	return f.res, f.err
}

func (f *fakeImpl) VerifyCode(_ context.Context, r VerifyRequest) error {
	f.gotV = r
	return f.verrErr
}

// serveFake runs impl behind a real gRPC server on loopback and returns
// the host's client for it.
func serveFake(t *testing.T, impl Transport) *GRPCClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterTransportServer(srv, &GRPCServer{Impl: impl})
	go srv.Serve(ln) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &GRPCClient{client: pb.NewTransportClient(cc)}
}

// Every sentinel error a plugin returns arrives at the host as itself
// (errors.Is) with the plugin's message; other errors match none of them.
func TestErrorsKeepIdentityAcrossGRPC(t *testing.T) {
	impl := &fakeImpl{}
	c := serveFake(t, impl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sentinels := []error{ErrNotConnected, ErrDeadlinePassed, ErrEpochMismatch, ErrRefused, ErrBadCert, ErrBadCode, ErrNoCode, ErrUnsupported, ErrInvalidValue, ErrNoSuchItem}
	for _, want := range sentinels {
		impl.verrErr = fmt.Errorf("verify +1 555: %w", want)
		err := c.VerifyCode(ctx, VerifyRequest{CC: "1", Phone: "555", Code: "123456"})
		for _, other := range sentinels {
			if errors.Is(err, other) != (other == want) {
				t.Errorf("plugin returned %v; host got %v, errors.Is(%v) = %v", want, err, other, errors.Is(err, other))
			}
		}
		if !strings.Contains(err.Error(), "verify +1 555") {
			t.Errorf("host error %q lost the plugin's message", err)
		}
	}
	impl.verrErr = errors.New("disk on fire")
	err := c.VerifyCode(ctx, VerifyRequest{})
	for _, s := range sentinels {
		if errors.Is(err, s) {
			t.Errorf("plain error %v matches %v", err, s)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("plain error arrived as %v", err)
	}
	impl.verrErr = nil
	if err := c.VerifyCode(ctx, VerifyRequest{CC: "1", Phone: "555", Code: "123456"}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if impl.gotV != (VerifyRequest{CC: "1", Phone: "555", Code: "123456"}) {
		t.Errorf("plugin got %+v", impl.gotV)
	}
}

// RequestCode carries every field both ways.
func TestRequestCodeOverGRPC(t *testing.T) {
	impl := &fakeImpl{res: RegistrationResult{VName: "Acme", AlreadyRegistered: true}}
	c := serveFake(t, impl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := RegistrationRequest{CC: "1", Phone: "6315551234", Method: MethodVoice, Cert: []byte{0, 1, 0xff}, Pin: "123456"}
	res, err := c.RequestCode(ctx, req)
	if err != nil || res != impl.res {
		t.Fatalf("request code = %+v, %v", res, err)
	}
	if impl.got.CC != req.CC || impl.got.Phone != req.Phone || impl.got.Method != req.Method ||
		string(impl.got.Cert) != string(req.Cert) || impl.got.Pin != req.Pin {
		t.Errorf("plugin got %+v, sent %+v", impl.got, req)
	}
	impl.err = fmt.Errorf("cert: %w", ErrBadCert)
	if _, err := c.RequestCode(ctx, req); !errors.Is(err, ErrBadCert) {
		t.Errorf("bad cert arrived as %v", err)
	}
}
