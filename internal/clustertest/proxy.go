package clustertest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy a test puts between two processes to slow or cut the
// path between them: Delay holds every chunk in either direction for a
// while (latency, as a slow or distant MySQL shows), Cut turns the path
// into a black hole (bytes are swallowed, connections stay open and new
// ones are accepted but go nowhere, so each side learns of the cut only
// from its own timeouts, as with a real partition). Heal ends a cut and
// closes the connections that lived through it, whose streams lost bytes.
type Proxy struct {
	ln       net.Listener
	upstream string
	delay    atomic.Int64 // ns
	cut      atomic.Bool
	mu       sync.Mutex
	conns    map[*proxyConn]bool
	gen      atomic.Int64 // bumped by every Cut
}

type proxyConn struct {
	client, server net.Conn
	gen            int64 // the cut generation it was opened in
}

// StartProxy listens on a free loopback port and forwards to upstream until
// the test ends.
func StartProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, upstream: upstream, conns: map[*proxyConn]bool{}}
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is Addr's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// SetDelay sets the latency added to every chunk in each direction (0: none).
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Cut turns the path into a black hole until Heal.
func (p *Proxy) Cut() {
	p.gen.Add(1)
	p.cut.Store(true)
}

// Heal restores the path; connections that were open during the cut are
// closed, so both ends reconnect on clean streams.
func (p *Proxy) Heal() {
	p.cut.Store(false)
	gen := p.gen.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if c.gen < gen || c.server == nil {
			c.close()
			delete(p.conns, c)
		}
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.close()
	}
	p.conns = nil
}

func (c *proxyConn) close() {
	c.client.Close()
	if c.server != nil {
		c.server.Close()
	}
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		c := &proxyConn{client: client, gen: p.gen.Load()}
		if p.cut.Load() {
			// A black hole accepts and never answers: keep it, swallow
			// what it sends, close it on Heal.
			p.track(c)
			go io.Copy(io.Discard, client)
			continue
		}
		server, err := net.DialTimeout("tcp", p.upstream, 2*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c.server = server
		if !p.track(c) {
			c.close()
			return
		}
		go p.pump(c, client, server)
		go p.pump(c, server, client)
	}
}

func (p *Proxy) track(c *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil { // closed
		return false
	}
	p.conns[c] = true
	return true
}

// pump copies src to dst chunk by chunk, holding each chunk for the delay
// and dropping it while the path is cut. A close on either side closes
// both, unless the path is cut (a black hole does not pass on a FIN).
func (p *Proxy) pump(c *proxyConn, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			if !p.cut.Load() && c.gen == p.gen.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
		}
		if err != nil {
			if p.cut.Load() || c.gen != p.gen.Load() {
				// Keep the other side open and ignorant until Heal.
				io.Copy(io.Discard, src)
				return
			}
			c.close()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
			return
		}
	}
}
