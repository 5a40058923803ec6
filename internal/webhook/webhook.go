// Package webhook is how every node posts to the business's webhook
// (settings webhooks.url): coreapps their callbacks, the primary master its
// service notifications.
package webhook

import (
	"fmt"
	"io"
	"net/http"
)

// Do sends req and reports whether the webhook took it: only a 200 counts,
// as in the original. The answer's body is read (up to 64 KiB) and dropped,
// so the connection can be reused.
func Do(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
