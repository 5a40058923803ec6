// Command healthprobe is the container healthcheck of every image: the images
// are FROM scratch, with no shell or curl. It GETs a URL and exits 0 when an
// HTTP answer below 500 comes back within the timeout. Internal ports answer
// a stranger 403 and the gateway answers 401 without a token: either proves
// the process is up and serving, without giving the probe any secret.
//
//	healthprobe http://127.0.0.1:6250/internal/health
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: healthprobe URL")
		os.Exit(2)
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "healthprobe: %v\n", err)
		os.Exit(1)
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		fmt.Fprintf(os.Stderr, "healthprobe: %s answered %s\n", os.Args[1], resp.Status)
		os.Exit(1)
	}
}
