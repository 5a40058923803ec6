// Command healthprobe is the container healthcheck of every image: the images
// are FROM scratch, with no shell or curl.
//
//	healthprobe http://127.0.0.1:9090/v1/health   # an HTTP answer below 500
//	healthprobe tcp://127.0.0.1:6250              # the port accepts connections
//
// The gateway answers 401 without a token, which proves it serves. Masters'
// and coreapps' internal ports admit cluster members only and log every
// stranger, so they are probed by connecting alone: nothing to refuse, no
// secret in the probe, no log line every few seconds.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const timeout = 3 * time.Second

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: healthprobe http://HOST:PORT/PATH | tcp://HOST:PORT")
		os.Exit(2)
	}
	if err := probe(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "healthprobe: %v\n", err)
		os.Exit(1)
	}
}

func probe(target string) error {
	if addr, ok := strings.CutPrefix(target, "tcp://"); ok {
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	resp, err := (&http.Client{Timeout: timeout}).Get(target)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%s answered %s", target, resp.Status)
	}
	return nil
}
