// Package freeport picks a TCP port for a process about to be started to
// listen on: by the tests' harnesses, the private MariaDB and the
// one-command local cluster.
//
// The port is chosen below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), not by listening on port 0. A port the
// kernel handed out for port 0 comes from that range, and once it is
// released any outgoing connection on the host may be given it as its
// source port before the started process binds it: with many test
// processes connecting to each other, a simulated network failed with
// "bind: address already in use" that way in CI. Below the range, only
// another picker or a listener can take it.
package freeport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the bottom of the range picked from: above the registered
// ports most local services use.
const lowest = 10000

// Pick returns a port on host that nothing listened on a moment ago, below
// the ephemeral range; if it finds none, one the kernel chooses.
func Pick(host string) (int, error) {
	top := ephemeralStart()
	for range 200 {
		if top <= lowest {
			break
		}
		p := lowest + rand.IntN(top-lowest)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return p, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralStart is the first port of the kernel's ephemeral range, or
// Linux's default start when it cannot be read.
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}
