package simnet

import (
	"net"
	"sync"
	"time"
)

// writeTimeout bounds one write to a plugin. A plugin that does not read
// for this long is broken; its connection is closed.
const writeTimeout = 5 * time.Second

// finalWriteTimeout bounds the courtesy frame written before the network
// closes a connection, so an unresponsive peer cannot delay the close.
const finalWriteTimeout = time.Second

// outbox queues frames for one connection's writer goroutine. It is
// unbounded so that the network, which pushes under its lock, never waits
// for a slow plugin.
type outbox struct {
	mu       sync.Mutex
	q        []Frame
	finished bool
	final    *Frame
	wake     chan struct{}
}

func newOutbox() *outbox { return &outbox{wake: make(chan struct{}, 1)} }

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// push queues f unless the outbox is finished.
func (o *outbox) push(f Frame) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.finished {
		return
	}
	o.q = append(o.q, f)
	o.signal()
}

// finish stops the outbox: the writer writes final (if not nil) and closes
// the connection. It returns the frames that were not written yet.
func (o *outbox) finish(final *Frame) []Frame {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.finished {
		return nil
	}
	o.finished, o.final = true, final
	unsent := o.q
	o.q = nil
	o.signal()
	return unsent
}

// run writes queued frames to nc until finish, then closes nc. The frames
// queued at one wake go out in one write: the network pushes a shard's
// events a few at a time, and a write (a syscall, a TCP segment, a wake-up
// of the plugin's reader) per event cost more than the events themselves.
func (o *outbox) run(nc net.Conn) {
	defer nc.Close()
	var buf []byte
	for range o.wake {
		o.mu.Lock()
		q, finished, final := o.q, o.finished, o.final
		o.q = nil
		o.mu.Unlock()
		for len(q) > 0 {
			buf = buf[:0]
			n := 0
			for ; n < len(q) && (n == 0 || len(buf) < maxWrite); n++ {
				b, err := marshalFrame(q[n])
				if err != nil {
					return // cannot happen: frames are plain data
				}
				buf = append(buf, b...)
			}
			q = q[n:]
			if err := writeAll(nc, buf, writeTimeout); err != nil {
				// The reader sees the closed socket and ends the
				// connection; frames still queued go back to the
				// shard then.
				return
			}
		}
		if finished {
			if final != nil {
				_ = writeFrame(nc, *final, finalWriteTimeout) // courtesy only
			}
			return
		}
	}
}

// maxWrite bounds the frames gathered into one write, so a large backlog
// is written in pieces rather than copied whole into one buffer.
const maxWrite = 256 << 10

func writeFrame(nc net.Conn, f Frame, timeout time.Duration) error {
	b, err := marshalFrame(f)
	if err != nil {
		return err
	}
	return writeAll(nc, b, timeout)
}

func writeAll(nc net.Conn, b []byte, timeout time.Duration) error {
	if err := nc.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	_, err := nc.Write(b)
	return err
}
