package clustertest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// LatencyProxy forwards TCP connections to a target (the test's MariaDB)
// and holds everything the client sends for Delay before passing it on, as
// `tc qdisc ... netem delay` on the client's side would: every round trip
// to the database takes Delay longer, bandwidth is unchanged.
type LatencyProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// StartLatencyProxy listens on a free loopback port; it is closed, with
// every connection through it, when the test ends.
func StartLatencyProxy(t testing.TB, target string, delay time.Duration) *LatencyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &LatencyProxy{ln: ln, target: target, delay: delay, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *LatencyProxy) Addr() *net.TCPAddr { return p.ln.Addr().(*net.TCPAddr) }

func (p *LatencyProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", p.target, 3*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client, server)
		go p.pipe(client, server, p.delay)
		go p.pipe(server, client, 0)
	}
}

func (p *LatencyProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
}

type chunk struct {
	at time.Time
	b  []byte
}

// pipe copies src to dst, each chunk written no earlier than delay after
// it was read, in order. Either side closing closes both.
func (p *LatencyProxy) pipe(src, dst net.Conn, delay time.Duration) {
	defer src.Close()
	defer dst.Close()
	if delay == 0 {
		io.Copy(dst, src)
		return
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{time.Now().Add(delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}

func (p *LatencyProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}
