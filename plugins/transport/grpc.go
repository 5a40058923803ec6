package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/multiconnect/multiconnect/plugins/transport/proto"
)

// PluginName is the name under which a plugin binary serves its Transport.
const PluginName = "transport"

// Handshake is shared by the host and every transport plugin. go-plugin
// refuses to run a binary that was not started by a host with the same
// cookie, and a host refuses a plugin speaking another protocol version;
// bump ProtocolVersion on any incompatible change to transport.proto
// (2: event sequence numbers, Ack and CheckContacts; 3: RequestCode and
// VerifyCode; 4: event streams and connections, Ack per connection; 5:
// the shard count (Layout) in Connect and Extend: the fields are
// compatible on the wire, but a plugin that drops them would strand a
// re-shard's events again, so an old one is refused; 6: Call, the
// account and message operations beyond sending; 7: events stream in
// batches, EventBatch).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  7,
	MagicCookieKey:   "MULTICONNECT_TRANSPORT_PLUGIN",
	MagicCookieValue: "4c1f3a0e-transport-v1",
}

// Size bounds on the host-plugin path. gRPC refuses messages over 4 MiB
// unless told otherwise, which a batch of large messages easily is; both
// sides set MaxGRPCMessage explicitly so the bound is one number, and
// hosts keep a Send under MaxSendBytes, well below it.
const (
	// MaxGRPCMessage is the largest gRPC message host and plugin accept
	// from each other, either way.
	MaxGRPCMessage = 32 << 20
	// MaxSendBytes bounds the messages of one Send (ids, addresses, types
	// and bodies added up, see MessageSize) that a host batches together;
	// a single message larger than this still goes alone.
	MaxSendBytes = 1 << 20
	// MaxMessageBytes is the largest message (see MessageSize) that can
	// cross to the plugin at all: a host fails a larger one itself. It
	// leaves MaxGRPCMessage room for protobuf framing.
	MaxMessageBytes = MaxGRPCMessage - 64<<10
)

// MessageSize is what m counts for against MaxSendBytes and
// MaxMessageBytes.
func MessageSize(m Message) int { return len(m.ID) + len(m.To) + len(m.Type) + len(m.Body) }

// grpcServer is the plugin's gRPC server, with the message size bound.
func grpcServer(opts []grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(MaxGRPCMessage), grpc.MaxSendMsgSize(MaxGRPCMessage))...)
}

// grpcDialOptions set the host's side of the message size bound.
var grpcDialOptions = []grpc.DialOption{
	grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxGRPCMessage), grpc.MaxCallSendMsgSize(MaxGRPCMessage)),
}

// PluginMap is the plugin set a host dispenses from.
var PluginMap = map[string]plugin.Plugin{PluginName: &GRPCPlugin{}}

// GRPCPlugin serves and consumes a Transport over gRPC. Only gRPC is
// supported: the Events stream has no net/rpc equivalent.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the plugin's implementation; the host leaves it nil.
	Impl Transport
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the plugin's implementation.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterTransportServer(s, &GRPCServer{Impl: p.Impl})
	return nil
}

// GRPCClient returns the host's Transport.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &GRPCClient{client: pb.NewTransportClient(c)}, nil
}

// Serve runs impl as a transport plugin; call it from the plugin's main. It
// returns when the host closes the plugin. Logs go through slog.Default,
// which a plugin should set to NewPluginLogger so the host can route them.
//
// Besides Pdeathsig (set by Start), Serve exits the process when its parent
// changes: a plugin that outlives its coreapp would keep a connection that
// the cluster believes gone.
func Serve(impl Transport) {
	log := slog.Default()
	go watchParent(os.Getppid(), log)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         map[string]plugin.Plugin{PluginName: &GRPCPlugin{Impl: impl}},
		GRPCServer:      grpcServer,
		Logger:          newHCLogger(log.Handler(), ""),
	})
	if c, ok := impl.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Warn("closing transport after the host left", "err", err)
		}
	}
}

// watchParent exits the process once it has been reparented, which means
// the host died. Pdeathsig normally kills us first; this catches the cases
// it misses (it fires when the host's forking thread exits, not the host).
func watchParent(ppid int, log *slog.Logger) {
	for range time.Tick(200 * time.Millisecond) {
		if now := os.Getppid(); now != ppid {
			log.Error("host process is gone; exiting", "host_pid", ppid, "ppid", now)
			os.Exit(3)
		}
	}
}

// GRPCClient is the host's Transport: every call goes to the plugin.
type GRPCClient struct{ client pb.TransportClient }

var _ Transport = (*GRPCClient)(nil)

// Info implements Transport.
func (c *GRPCClient) Info(ctx context.Context) (Info, error) {
	r, err := c.client.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus("info", err)
	}
	return Info{Name: r.GetName(), Version: r.GetVersion(), KeepaliveTimeout: time.Duration(r.GetKeepaliveTimeoutNs())}, nil
}

// Connect implements Transport.
func (c *GRPCClient) Connect(ctx context.Context, req ConnectRequest) error {
	_, err := c.client.Connect(ctx, &pb.ConnectRequest{
		Shard: int64(req.Shard), Epoch: req.Epoch, Node: req.Node, Deadline: req.Deadline,
		Shards: int64(req.Layout.Shards), MapVersion: req.Layout.Version,
	})
	return fromStatus("connect", err)
}

// Extend implements Transport.
func (c *GRPCClient) Extend(ctx context.Context, epoch uint64, deadline int64, layout Layout) error {
	_, err := c.client.Extend(ctx, &pb.ExtendRequest{Epoch: epoch, Deadline: deadline,
		Shards: int64(layout.Shards), MapVersion: layout.Version})
	return fromStatus("extend", err)
}

// Disconnect implements Transport.
func (c *GRPCClient) Disconnect(ctx context.Context) error {
	_, err := c.client.Disconnect(ctx, &pb.DisconnectRequest{})
	return fromStatus("disconnect", err)
}

// Health implements Transport.
func (c *GRPCClient) Health(ctx context.Context) (Health, error) {
	r, err := c.client.Health(ctx, &pb.HealthRequest{})
	if err != nil {
		return Health{}, fromStatus("health", err)
	}
	return Health{
		Connected: r.GetConnected(), Shard: int(r.GetShard()), Epoch: r.GetEpoch(),
		Deadline: r.GetDeadline(), LastError: r.GetLastError(),
	}, nil
}

// Send implements Transport.
func (c *GRPCClient) Send(ctx context.Context, msgs []Message) ([]SendResult, error) {
	req := &pb.SendRequest{Messages: make([]*pb.Message, len(msgs))}
	for i, m := range msgs {
		req.Messages[i] = &pb.Message{Id: m.ID, To: m.To, Type: m.Type, Body: m.Body}
	}
	r, err := c.client.Send(ctx, req)
	if err != nil {
		return nil, fromStatus("send", err)
	}
	if len(r.GetResults()) != len(msgs) {
		return nil, fmt.Errorf("transport send: plugin returned %d results for %d messages", len(r.GetResults()), len(msgs))
	}
	out := make([]SendResult, len(msgs))
	for i, res := range r.GetResults() {
		out[i] = SendResult{ID: res.GetId(), Status: sendStatusFromPB(res.GetStatus()), Error: res.GetError()}
	}
	return out, nil
}

// Events implements Transport, one event at a time (see EventBatches).
func (c *GRPCClient) Events(ctx context.Context) (<-chan Event, error) {
	batches, err := c.EventBatches(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event)
	go func() {
		defer close(ch)
		for b := range batches {
			for _, e := range b {
				select {
				case ch <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}

// EventBatches implements EventBatcher: each batch is one message of the
// plugin's stream. The stream is opened before it returns, so an error
// here means the plugin could not be reached.
func (c *GRPCClient) EventBatches(ctx context.Context) (<-chan []Event, error) {
	stream, err := c.client.Events(ctx, &pb.EventsRequest{})
	if err != nil {
		return nil, fromStatus("events", err)
	}
	// Wait for the headers, which the plugin sends once it has subscribed
	// (see GRPCServer.Events): gRPC would otherwise report a refused
	// stream only on the first read, and events pushed between this
	// return and the subscription would be missed.
	if _, err := stream.Header(); err != nil {
		return nil, fromStatus("events", err)
	}
	ch := make(chan []Event)
	go func() {
		defer close(ch)
		for {
			m, err := stream.Recv()
			if err != nil {
				return // io.EOF, cancellation or the plugin is gone
			}
			if len(m.GetEvents()) == 0 {
				continue
			}
			b := make([]Event, len(m.GetEvents()))
			for i, e := range m.GetEvents() {
				b[i] = eventFromPB(e)
			}
			select {
			case ch <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Ack implements Transport.
func (c *GRPCClient) Ack(ctx context.Context, shard int, conn int64, seq uint64) error {
	_, err := c.client.Ack(ctx, &pb.AckRequest{Shard: int64(shard), Conn: conn, Seq: seq})
	return fromStatus("ack", err)
}

// CheckContacts implements Transport.
func (c *GRPCClient) CheckContacts(ctx context.Context, inputs []string) ([]ContactResult, error) {
	r, err := c.client.CheckContacts(ctx, &pb.CheckContactsRequest{Inputs: inputs})
	if err != nil {
		return nil, fromStatus("check contacts", err)
	}
	if len(r.GetContacts()) != len(inputs) {
		return nil, fmt.Errorf("transport check contacts: plugin returned %d results for %d inputs", len(r.GetContacts()), len(inputs))
	}
	out := make([]ContactResult, len(inputs))
	for i, cr := range r.GetContacts() {
		out[i] = ContactResult{Input: cr.GetInput(), Status: cr.GetStatus(), WAID: cr.GetWaId()}
	}
	return out, nil
}

// RequestCode implements Transport.
func (c *GRPCClient) RequestCode(ctx context.Context, req RegistrationRequest) (RegistrationResult, error) {
	r, err := c.client.RequestCode(ctx, &pb.RequestCodeRequest{
		Cc: req.CC, PhoneNumber: req.Phone, Method: req.Method, Cert: req.Cert, Pin: req.Pin,
	})
	if err != nil {
		return RegistrationResult{}, fromStatus("request code", err)
	}
	return RegistrationResult{VName: r.GetVname(), AlreadyRegistered: r.GetAlreadyRegistered()}, nil
}

// VerifyCode implements Transport.
func (c *GRPCClient) VerifyCode(ctx context.Context, req VerifyRequest) error {
	_, err := c.client.VerifyCode(ctx, &pb.VerifyCodeRequest{Cc: req.CC, PhoneNumber: req.Phone, Code: req.Code})
	return fromStatus("verify code", err)
}

// Call implements Transport.
func (c *GRPCClient) Call(ctx context.Context, op string, body []byte) ([]byte, error) {
	r, err := c.client.Call(ctx, &pb.CallRequest{Op: op, Body: body})
	if err != nil {
		return nil, fromStatus("call "+op, err)
	}
	return r.GetBody(), nil
}

// GRPCServer is the plugin's half: it calls the real implementation.
type GRPCServer struct {
	pb.UnimplementedTransportServer
	Impl Transport
}

// Info implements pb.TransportServer.
func (s *GRPCServer) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	info, err := s.Impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.InfoResponse{Name: info.Name, Version: info.Version, KeepaliveTimeoutNs: int64(info.KeepaliveTimeout)}, nil
}

// Connect implements pb.TransportServer.
func (s *GRPCServer) Connect(ctx context.Context, r *pb.ConnectRequest) (*pb.ConnectResponse, error) {
	err := s.Impl.Connect(ctx, ConnectRequest{Shard: int(r.GetShard()), Epoch: r.GetEpoch(), Node: r.GetNode(), Deadline: r.GetDeadline(),
		Layout: Layout{Shards: int(r.GetShards()), Version: r.GetMapVersion()}})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ConnectResponse{}, nil
}

// Extend implements pb.TransportServer.
func (s *GRPCServer) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if err := s.Impl.Extend(ctx, r.GetEpoch(), r.GetDeadline(), Layout{Shards: int(r.GetShards()), Version: r.GetMapVersion()}); err != nil {
		return nil, toStatus(err)
	}
	return &pb.ExtendResponse{}, nil
}

// Disconnect implements pb.TransportServer.
func (s *GRPCServer) Disconnect(ctx context.Context, _ *pb.DisconnectRequest) (*pb.DisconnectResponse, error) {
	if err := s.Impl.Disconnect(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &pb.DisconnectResponse{}, nil
}

// Health implements pb.TransportServer.
func (s *GRPCServer) Health(ctx context.Context, _ *pb.HealthRequest) (*pb.HealthResponse, error) {
	h, err := s.Impl.Health(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.HealthResponse{
		Connected: h.Connected, Shard: int64(h.Shard), Epoch: h.Epoch, Deadline: h.Deadline, LastError: h.LastError,
	}, nil
}

// Send implements pb.TransportServer.
func (s *GRPCServer) Send(ctx context.Context, r *pb.SendRequest) (*pb.SendResponse, error) {
	msgs := make([]Message, len(r.GetMessages()))
	for i, m := range r.GetMessages() {
		msgs[i] = Message{ID: m.GetId(), To: m.GetTo(), Type: m.GetType(), Body: m.GetBody()}
	}
	res, err := s.Impl.Send(ctx, msgs)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.SendResponse{Results: make([]*pb.SendResult, len(res))}
	for i, sr := range res {
		out.Results[i] = &pb.SendResult{Id: sr.ID, Status: sendStatusToPB(sr.Status), Error: sr.Error}
	}
	return out, nil
}

// Events implements pb.TransportServer. One message carries a batch of
// events (up to eventBatch, and MaxSendBytes of eventSize): a gRPC message,
// HTTP/2 frame and write per event cost the plugin and the host more than
// the events' own work. A plugin that offers EventBatches hands over its
// batches as they come; for one that offers only Events, whatever is
// queued on its channel goes together. Nothing waits to fill a batch, so
// an event alone goes at once.
func (s *GRPCServer) Events(_ *pb.EventsRequest, stream grpc.ServerStreamingServer[pb.EventBatch]) error {
	ctx := stream.Context()
	var batches <-chan []Event
	var events <-chan Event
	var err error
	if b, ok := s.Impl.(EventBatcher); ok {
		batches, err = b.EventBatches(ctx)
	} else {
		events, err = s.Impl.Events(ctx)
	}
	if err != nil {
		return toStatus(err)
	}
	// Send the headers now so the host's Events returns only once the
	// subscription exists: events pushed after that are not missed.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	m := &pb.EventBatch{}
	send := func() error {
		err := stream.Send(m)
		m = &pb.EventBatch{}
		return err
	}
	size := 0
	add := func(e Event) error {
		if len(m.Events) > 0 && (len(m.Events) == eventBatch || size+eventSize(e) > MaxSendBytes) {
			if err := send(); err != nil {
				return err
			}
			size = 0
		}
		m.Events = append(m.Events, eventToPB(e))
		size += eventSize(e)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case b, ok := <-batches:
			if !ok {
				return nil
			}
			for _, e := range b {
				if err := add(e); err != nil {
					return err
				}
			}
		case e, ok := <-events:
			if !ok {
				return nil
			}
			if err := add(e); err != nil {
				return err
			}
		more:
			for {
				select {
				case e, ok = <-events:
					if !ok {
						break more // send what came; the next receive ends the stream
					}
					if err := add(e); err != nil {
						return err
					}
				default:
					break more
				}
			}
		}
		if err := send(); err != nil {
			return err
		}
		size = 0
	}
}

// eventBatch bounds the events of one EventBatch, and MaxSendBytes (of
// eventSize) its bytes: a batch stays far below MaxGRPCMessage, whatever
// the events carry.
const eventBatch = 512

// eventSize is roughly what e takes in an EventBatch.
func eventSize(e Event) int {
	return len(e.Payload) + len(e.MessageID) + len(e.Recipient) + len(e.Stream) + len(e.Status) + 64
}

// Ack implements pb.TransportServer.
func (s *GRPCServer) Ack(ctx context.Context, r *pb.AckRequest) (*pb.AckResponse, error) {
	if err := s.Impl.Ack(ctx, int(r.GetShard()), r.GetConn(), r.GetSeq()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.AckResponse{}, nil
}

// CheckContacts implements pb.TransportServer.
func (s *GRPCServer) CheckContacts(ctx context.Context, r *pb.CheckContactsRequest) (*pb.CheckContactsResponse, error) {
	res, err := s.Impl.CheckContacts(ctx, r.GetInputs())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.CheckContactsResponse{Contacts: make([]*pb.ContactResult, len(res))}
	for i, cr := range res {
		out.Contacts[i] = &pb.ContactResult{Input: cr.Input, Status: cr.Status, WaId: cr.WAID}
	}
	return out, nil
}

// RequestCode implements pb.TransportServer.
func (s *GRPCServer) RequestCode(ctx context.Context, r *pb.RequestCodeRequest) (*pb.RequestCodeResponse, error) {
	res, err := s.Impl.RequestCode(ctx, RegistrationRequest{
		CC: r.GetCc(), Phone: r.GetPhoneNumber(), Method: r.GetMethod(), Cert: r.GetCert(), Pin: r.GetPin(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.RequestCodeResponse{Vname: res.VName, AlreadyRegistered: res.AlreadyRegistered}, nil
}

// VerifyCode implements pb.TransportServer.
func (s *GRPCServer) VerifyCode(ctx context.Context, r *pb.VerifyCodeRequest) (*pb.VerifyCodeResponse, error) {
	if err := s.Impl.VerifyCode(ctx, VerifyRequest{CC: r.GetCc(), Phone: r.GetPhoneNumber(), Code: r.GetCode()}); err != nil {
		return nil, toStatus(err)
	}
	return &pb.VerifyCodeResponse{}, nil
}

// Call implements pb.TransportServer.
func (s *GRPCServer) Call(ctx context.Context, r *pb.CallRequest) (*pb.CallResponse, error) {
	b, err := s.Impl.Call(ctx, r.GetOp(), r.GetBody())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CallResponse{Body: b}, nil
}

// errorCodes gives each sentinel error its own gRPC code so that the host
// can restore it; the codes are otherwise unused by the plugin server.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrNotConnected, codes.FailedPrecondition},
	{ErrDeadlinePassed, codes.OutOfRange},
	{ErrEpochMismatch, codes.Aborted},
	{ErrRefused, codes.PermissionDenied},
	{ErrBadCert, codes.Unauthenticated},
	{ErrBadCode, codes.InvalidArgument},
	{ErrNoCode, codes.NotFound},
	// The rest are arbitrary but fixed: they only carry the sentinel.
	{ErrUnsupported, codes.Unimplemented},
	{ErrInvalidValue, codes.AlreadyExists},
	{ErrNoSuchItem, codes.DataLoss},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

func toStatus(err error) error {
	for _, ec := range errorCodes {
		if errors.Is(err, ec.err) {
			return status.Error(ec.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// remoteError is an error returned by the plugin: its text is the
// plugin's, and it matches the sentinel the plugin's error matched.
type remoteError struct {
	op       string
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return "transport " + e.op + ": " + e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func fromStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("transport %s: %w", op, err)
	}
	for _, ec := range errorCodes {
		if st.Code() == ec.code {
			return &remoteError{op: op, msg: st.Message(), sentinel: ec.err}
		}
	}
	return &remoteError{op: op, msg: st.Message()}
}

func sendStatusToPB(s SendStatus) pb.SendStatus {
	switch s {
	case SendAccepted:
		return pb.SendStatus_SEND_STATUS_ACCEPTED
	case SendDuplicate:
		return pb.SendStatus_SEND_STATUS_DUPLICATE
	case SendFailed:
		return pb.SendStatus_SEND_STATUS_FAILED
	}
	return pb.SendStatus_SEND_STATUS_UNSPECIFIED
}

func sendStatusFromPB(s pb.SendStatus) SendStatus {
	switch s {
	case pb.SendStatus_SEND_STATUS_ACCEPTED:
		return SendAccepted
	case pb.SendStatus_SEND_STATUS_DUPLICATE:
		return SendDuplicate
	}
	// An unknown verdict must not pass for a delivery.
	return SendFailed
}

func eventToPB(e Event) *pb.Event {
	return &pb.Event{
		Kind: string(e.Kind), MessageId: e.MessageID, Status: e.Status,
		Recipient: e.Recipient, Timestamp: e.Timestamp, Payload: e.Payload,
		Shard: int64(e.Shard), Seq: e.Seq, Stream: e.Stream, Conn: e.Conn,
	}
}

func eventFromPB(e *pb.Event) Event {
	return Event{
		Kind: EventKind(e.GetKind()), MessageID: e.GetMessageId(), Status: e.GetStatus(),
		Recipient: e.GetRecipient(), Timestamp: e.GetTimestamp(), Payload: e.GetPayload(),
		Shard: int(e.GetShard()), Seq: e.GetSeq(), Stream: e.GetStream(), Conn: e.GetConn(),
	}
}
