// Package graph is the Cloud API transport's HTTP client for Meta's Graph
// API: one place that knows the base URL, the version, the access token and
// how errors come back. Every request names the node, shard and epoch it is
// sent for in X-Multiconnect-* headers: the real Graph API ignores them,
// and the test server (graphtest) records them to check that two nodes
// never send for one shard at the same time.
package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// Config is what the client needs to reach the Graph API.
type Config struct {
	BaseURL       string // default graphapi.DefaultBaseURL
	Version       string // default graphapi.DefaultVersion
	PhoneNumberID string
	AccessToken   string
	// Timeout bounds one request (default 20 s); a request's context may
	// end it sooner (the claim's deadline).
	Timeout time.Duration
}

// Client makes Graph API requests.
type Client struct {
	cfg Config
	hc  *http.Client
}

// Sender identifies who sends a request (headers for the test server).
type Sender struct {
	Node  string
	Shard int
	Epoch uint64
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	if cfg.BaseURL == "" {
		cfg.BaseURL = graphapi.DefaultBaseURL
	}
	if cfg.Version == "" {
		cfg.Version = graphapi.DefaultVersion
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return &Client{cfg: cfg, hc: &http.Client{Timeout: cfg.Timeout}}
}

// PhoneNumberID is the number the client sends for.
func (c *Client) PhoneNumberID() string { return c.cfg.PhoneNumberID }

// URL is the absolute URL of a Graph path such as "/{phone}/messages"
// (the version is prefixed) or an absolute URL (a media download) as is.
func (c *Client) URL(path string) string {
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		return path
	}
	return c.cfg.BaseURL + "/" + c.cfg.Version + path
}

// Do sends a request with the access token and decodes a JSON answer into
// out (when not nil). A Graph error answer is returned as *graphapi.Error;
// any other error means the outcome is unknown when the request may have
// left (see Unknown).
func (c *Client) Do(ctx context.Context, who Sender, method, path, contentType string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.URL(path), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("graph %s %s: %w", method, path, err)
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.AccessToken)
	if who.Node != "" {
		req.Header.Set("X-Multiconnect-Node", who.Node)
		req.Header.Set("X-Multiconnect-Shard", strconv.Itoa(who.Shard))
		req.Header.Set("X-Multiconnect-Epoch", strconv.FormatUint(who.Epoch, 10))
		req.Header.Set("X-Multiconnect-Sent", strconv.FormatInt(time.Now().UnixNano(), 10))
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &UnknownError{Op: method + " " + path, Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &UnknownError{Op: method + " " + path, Err: err}
	}
	if resp.StatusCode/100 != 2 {
		var doc graphapi.ErrorDocument
		if json.Unmarshal(raw, &doc) != nil || doc.Error.Code == 0 {
			doc.Error = graphapi.Error{Message: strings.TrimSpace(string(raw)), Code: 0}
		}
		doc.Error.HTTPStatus = resp.StatusCode
		return &doc.Error
	}
	if out == nil {
		return nil
	}
	if b, ok := out.(*[]byte); ok {
		*b = raw
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("graph %s %s: answer is not the expected JSON: %w", method, path, err)
	}
	return nil
}

// UnknownError is a request whose outcome is not known: it failed after it
// may have reached the Graph API (timeout, connection cut).
type UnknownError struct {
	Op  string
	Err error
}

func (e *UnknownError) Error() string { return "graph " + e.Op + ": outcome unknown: " + e.Err.Error() }
func (e *UnknownError) Unwrap() error { return e.Err }
