// Package settings holds the application settings every node obeys
// (/v1/settings/application): defaults from the original product, overrides
// stored as one JSON document in MySQL, and a cache that notices a change
// within one poll (settings_version on the cluster row) without a restart.
package settings

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// Application is the effective settings document. Intervals are seconds and
// accept fractions, so an operator can trade DB load for fast detection.
type Application struct {
	// HeartbeatInterval: how often every master heartbeats every coreapp. Default 5.
	HeartbeatInterval float64 `json:"heartbeat_interval"`
	// UnhealthyInterval: a primary coreapp unanswered this long (by the primary
	// and one secondary master) is replaced; also the length of a shard claim.
	// Default 30. Must exceed HeartbeatInterval.
	UnhealthyInterval float64 `json:"unhealthy_interval"`

	// CallbackPersist: store callbacks in MySQL until the webhook took them,
	// so a restart or failover loses none. Default true.
	CallbackPersist bool `json:"callback_persist"`
	// CallbackBackoffDelayMS: the first retry of a callback the webhook did
	// not answer with 200 waits this long; the n-th waits n times it.
	// Default 3000.
	// The original documents it as a string ("3000"); both forms are taken.
	CallbackBackoffDelayMS Millis `json:"callback_backoff_delay_ms"`
	// MaxCallbackBackoffDelayMS caps the wait between retries. Default 900000.
	MaxCallbackBackoffDelayMS Millis `json:"max_callback_backoff_delay_ms"`
	// Webhooks: where callbacks go.
	Webhooks Webhooks `json:"webhooks"`
	// SentStatus: send a callback when a message reaches the network's
	// servers (the original's legacy switch; webhooks.message.sent too).
	// Default false.
	SentStatus bool `json:"sent_status"`

	// GarbageCollector: the primary master deletes, every hour, what is
	// older than MC_GC_RETENTION (default 30 days): with messages, sent and
	// failed messages and delivered callbacks; with media, uploads (row and
	// file). Unsent messages and undelivered callbacks are never touched.
	// Default messages true, media false, as in the original.
	GarbageCollector GarbageCollector `json:"garbagecollector_enable"`
	// Media.AutoDownload lists the inbound media types the original fetched
	// ahead of a request. Kept for compatibility: the simulated network's
	// inbound media carry links, so there is nothing to fetch. Default all.
	Media MediaSettings `json:"media"`
	// NotifyUserChangeNumber and ShowSecurityNotifications switched the
	// original's system callbacks; the simulated network emits none. Kept
	// for compatibility. Default true.
	NotifyUserChangeNumber    bool `json:"notify_user_change_number"`
	ShowSecurityNotifications bool `json:"show_security_notifications"`
	// PassThrough can no longer be enabled, as in the original since
	// v2.35: messages are kept until the garbage collector removes them.
	PassThrough bool `json:"pass_through"`
}

// GarbageCollector selects what the garbage collector removes.
type GarbageCollector struct {
	Media    bool `json:"media"`
	Messages bool `json:"messages"`
}

// MediaSettings is the original's media object.
type MediaSettings struct {
	AutoDownload []string `json:"auto_download"`
}

// MediaTypes are the values auto_download accepts.
var MediaTypes = []string{"audio", "document", "image", "sticker", "video", "voice"}

// Millis is a count of milliseconds, written as a number and read from a
// number or a string of digits.
type Millis int64

// UnmarshalJSON takes 3000 or "3000".
func (m *Millis) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number of milliseconds", s)
		}
		*m = Millis(n)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("%s is not a whole number of milliseconds", b)
	}
	*m = Millis(n)
	return nil
}

// Webhooks configures callback delivery.
type Webhooks struct {
	// URL receives every callback as a POST; empty sends none (and stores none).
	URL string `json:"url"`
	// MaxConcurrentRequests bounds the callback POSTs in flight per shard:
	// 6, 12, 18 or 24 as in the original. Default 12.
	MaxConcurrentRequests int `json:"max_concurrent_requests"`
	// Message selects which outbound message statuses are sent; failed
	// statuses and inbound messages always are.
	Message WebhookMessage `json:"message"`
}

// WebhookMessage selects message statuses. Defaults: sent false, delivered
// and read true.
type WebhookMessage struct {
	Sent      bool `json:"sent"`
	Delivered bool `json:"delivered"`
	Read      bool `json:"read"`
}

// Defaults are the original product's values.
func Defaults() Application {
	return Application{
		HeartbeatInterval: 5, UnhealthyInterval: 30,
		CallbackPersist: true, CallbackBackoffDelayMS: 3000, MaxCallbackBackoffDelayMS: 900000,
		Webhooks:         Webhooks{MaxConcurrentRequests: 12, Message: WebhookMessage{Delivered: true, Read: true}},
		GarbageCollector: GarbageCollector{Messages: true},
		Media:            MediaSettings{AutoDownload: append([]string(nil), MediaTypes...)},

		NotifyUserChangeNumber: true, ShowSecurityNotifications: true,
	}
}

// CallbackBackoff is the wait before retry n (from 1) of a callback: linear
// in n, capped at MaxCallbackBackoffDelayMS, as in the original.
func (a Application) CallbackBackoff(n int) time.Duration {
	d := int64(n) * int64(a.CallbackBackoffDelayMS)
	if d > int64(a.MaxCallbackBackoffDelayMS) || d < 0 {
		d = int64(a.MaxCallbackBackoffDelayMS)
	}
	return time.Duration(d) * time.Millisecond
}

// WantStatus reports whether the webhook wants callbacks for status.
func (a Application) WantStatus(status string) bool {
	switch status {
	case "sent":
		return a.Webhooks.Message.Sent || a.SentStatus
	case "delivered":
		return a.Webhooks.Message.Delivered
	case "read":
		return a.Webhooks.Message.Read
	}
	return true // failed, and anything new, always
}

// Heartbeat returns HeartbeatInterval as a duration.
func (a Application) Heartbeat() time.Duration { return seconds(a.HeartbeatInterval) }

// Unhealthy returns UnhealthyInterval as a duration.
func (a Application) Unhealthy() time.Duration { return seconds(a.UnhealthyInterval) }

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// ErrInvalid wraps every validation failure (API error 1009).
var ErrInvalid = errors.New("invalid setting")

// Validate refuses a document that cannot work.
func (a Application) Validate() error {
	switch {
	case a.HeartbeatInterval < 0.05 || a.HeartbeatInterval > 3600:
		return fmt.Errorf("%w: heartbeat_interval must be between 0.05 and 3600 seconds", ErrInvalid)
	case a.UnhealthyInterval <= a.HeartbeatInterval:
		return fmt.Errorf("%w: unhealthy_interval (%g) must be larger than heartbeat_interval (%g)", ErrInvalid, a.UnhealthyInterval, a.HeartbeatInterval)
	case a.UnhealthyInterval > 86400:
		return fmt.Errorf("%w: unhealthy_interval must be at most 86400 seconds", ErrInvalid)
	case a.CallbackBackoffDelayMS < 1 || a.CallbackBackoffDelayMS > 86400000:
		return fmt.Errorf("%w: callback_backoff_delay_ms must be between 1 and 86400000", ErrInvalid)
	case a.MaxCallbackBackoffDelayMS < a.CallbackBackoffDelayMS || a.MaxCallbackBackoffDelayMS > 86400000:
		return fmt.Errorf("%w: max_callback_backoff_delay_ms (%d) must be between callback_backoff_delay_ms (%d) and 86400000",
			ErrInvalid, a.MaxCallbackBackoffDelayMS, a.CallbackBackoffDelayMS)
	}
	switch a.Webhooks.MaxConcurrentRequests {
	case 6, 12, 18, 24:
	default:
		return fmt.Errorf("%w: webhooks.max_concurrent_requests must be 6, 12, 18 or 24", ErrInvalid)
	}
	if a.PassThrough {
		return fmt.Errorf("%w: pass_through can no longer be enabled", ErrInvalid)
	}
	for _, t := range a.Media.AutoDownload {
		if !slices.Contains(MediaTypes, t) {
			return fmt.Errorf("%w: media.auto_download: %q is not one of %s", ErrInvalid, t, strings.Join(MediaTypes, ", "))
		}
	}
	if u := a.Webhooks.URL; u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("%w: webhooks.url %q must be an absolute http or https URL", ErrInvalid, u)
		}
	}
	return nil
}

const rowName = "application"

// Load reads the effective settings: defaults overlaid with stored overrides.
func Load(ctx context.Context, q cluster.Querier) (Application, error) {
	a := Defaults()
	var raw string
	err := q.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = ?`, rowName).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return a, nil
	}
	if err != nil {
		return a, fmt.Errorf("load settings: %w", err)
	}
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		return a, fmt.Errorf("load settings: stored document is not valid: %w", err)
	}
	return a, nil
}

// Patch merges patch (a JSON object of known fields) into the stored
// settings, validates the result and bumps settings_version. q should be the
// primary master's fenced transaction, so nothing is written on error.
func Patch(ctx context.Context, q cluster.Querier, patch []byte) (Application, error) {
	cur, err := Load(ctx, q)
	if err != nil {
		return cur, err
	}
	dec := json.NewDecoder(bytes.NewReader(patch))
	dec.DisallowUnknownFields()
	next := cur
	if err := dec.Decode(&next); err != nil {
		return cur, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := next.Validate(); err != nil {
		return cur, err
	}
	return next, store(ctx, q, next)
}

// Reset puts every setting back to its default.
func Reset(ctx context.Context, q cluster.Querier) (Application, error) {
	if _, err := q.ExecContext(ctx, `DELETE FROM settings WHERE name = ?`, rowName); err != nil {
		return Defaults(), fmt.Errorf("reset settings: %w", err)
	}
	return Defaults(), cluster.BumpSettings(ctx, q)
}

func store(ctx context.Context, q cluster.Querier, a Application) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, NOW(6))
		ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = NOW(6)`, rowName, string(b)); err != nil {
		return fmt.Errorf("store settings: %w", err)
	}
	return cluster.BumpSettings(ctx, q)
}

// Cache keeps the effective settings fresh by polling settings_version.
type Cache struct {
	db       *sql.DB
	interval time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[Application]
	version  atomic.Int64
	// shards and mapVersion are the cluster's shard count and shard map
	// version as last read (each poll reads them anyway).
	shards     atomic.Int64
	mapVersion atomic.Int64
	mu         sync.Mutex
	onChange   []func(Application)
	changed    chan struct{} // closed and replaced on every change
}

// NewCache makes a cache polling every interval (200ms when zero), starting from defaults.
func NewCache(db *sql.DB, interval time.Duration, log *slog.Logger) *Cache {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	c := &Cache{db: db, interval: interval, log: log, changed: make(chan struct{})}
	d := Defaults()
	c.cur.Store(&d)
	return c
}

// Layout returns the cluster's shard count and the shard map version it
// was read at, as of the last poll (0, 0 before the first).
func (c *Cache) Layout() (shards int, mapVersion int64) {
	return int(c.shards.Load()), c.mapVersion.Load()
}

// Get returns the current settings.
func (c *Cache) Get() Application { return *c.cur.Load() }

// Version returns settings_version as of the last load (0 before the
// first). It moves on a change of any settings row, so what a node keeps
// from another row (a certificate) is re-read only when it moves.
func (c *Cache) Version() int64 { return c.version.Load() }

// Changed returns a channel closed at the next change, so a loop sleeping
// one interval wakes up to the new one at once.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// OnChange registers f, called after each change.
func (c *Cache) OnChange(f func(Application)) {
	c.mu.Lock()
	c.onChange = append(c.onChange, f)
	c.mu.Unlock()
}

// Refresh reloads if settings_version moved.
func (c *Cache) Refresh(ctx context.Context) error {
	st, err := cluster.ReadState(ctx, c.db)
	if err != nil {
		return err
	}
	if st.MapVersion >= c.mapVersion.Load() {
		c.shards.Store(int64(st.Shards))
		c.mapVersion.Store(st.MapVersion)
	}
	if st.SettingsVersion == c.version.Load() {
		return nil
	}
	a, err := Load(ctx, c.db)
	if err != nil {
		return err
	}
	old := c.cur.Swap(&a)
	c.version.Store(st.SettingsVersion)
	if !reflect.DeepEqual(*old, a) {
		c.log.Info("settings changed", "heartbeat_interval", a.HeartbeatInterval, "unhealthy_interval", a.UnhealthyInterval,
			"webhook", a.Webhooks.URL != "", "callback_persist", a.CallbackPersist)
		c.mu.Lock()
		fs := append([]func(Application){}, c.onChange...)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		for _, f := range fs {
			f(a)
		}
	}
	return nil
}

// Run polls until ctx ends; a failing DB leaves the last settings in force.
func (c *Cache) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c.Refresh(qctx)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
