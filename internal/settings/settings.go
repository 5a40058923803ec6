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
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/openapi"
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
	// ahead of a request. On the Cloud API, an inbound medium of a listed
	// type is fetched into the media directory before its callback is
	// stored, so GET /v1/media/{id} serves it (another type is fetched
	// when GET /v1/media/{id} asks for it); the simulated network's
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

	// LogLevel is every node's log level (masters, coreapps, gateways):
	// debug, info, warning or error. Default info. A node started with
	// MC_LOG_LEVEL logs at least that verbosely whatever this says.
	LogLevel string `json:"log_level"`
	// VerboseLogging logs at debug whatever LogLevel says. Default false.
	VerboseLogging bool `json:"verbose_logging"`

	// Fields of the original's document with no meaning here, kept so an
	// integration that sets them is not refused and reads back what it
	// set. OnCallPager named a WhatsApp contact (or group) the original
	// paged with critical errors; TCPListenAddress an internal listener of
	// its coreapp; AxolotlContextStripingDisabled an encryption detail of
	// its network. The simulated network has no use for any of them.
	OnCallPager                    string `json:"on_call_pager,omitempty"`
	TCPListenAddress               string `json:"tcp_listen_address,omitempty"`
	AxolotlContextStripingDisabled bool   `json:"axolotl_context_striping_disabled"`
}

// LogLevels are the values log_level accepts, in the original's words.
var LogLevels = map[string]slog.Level{
	"debug": slog.LevelDebug, "info": slog.LevelInfo, "warning": slog.LevelWarn, "error": slog.LevelError,
}

// Level is the slog level the settings ask every node to log at.
func (a Application) Level() slog.Level {
	if a.VerboseLogging {
		return slog.LevelDebug
	}
	if l, ok := LogLevels[a.LogLevel]; ok {
		return l
	}
	return slog.LevelInfo
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
		LogLevel: "info",
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

// StatusCallbackWanted reports whether a status callback is wanted at all:
// a webhook is set and WantStatus says yes. The coreapp's callback writer
// and the gateway's Cloud API webhook (which leaves the others out before
// storing them) both decide by it.
func (a Application) StatusCallbackWanted(status string) bool {
	return a.Webhooks.URL != "" && a.WantStatus(status)
}

// Heartbeat returns HeartbeatInterval as a duration.
func (a Application) Heartbeat() time.Duration { return seconds(a.HeartbeatInterval) }

// Unhealthy returns UnhealthyInterval as a duration.
func (a Application) Unhealthy() time.Duration { return seconds(a.UnhealthyInterval) }

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// ErrInvalid wraps every validation failure (API error 1009).
var ErrInvalid = errors.New("invalid setting")

// Validate refuses a document that cannot work, for what the
// ApplicationSettings schema of the OpenAPI document cannot say: rules
// across fields, and the milliseconds a string may carry.
func (a Application) Validate() error {
	switch {
	case a.UnhealthyInterval <= a.HeartbeatInterval:
		return fmt.Errorf("%w: unhealthy_interval (%g) must be larger than heartbeat_interval (%g)", ErrInvalid, a.UnhealthyInterval, a.HeartbeatInterval)
	case a.CallbackBackoffDelayMS < 1 || a.CallbackBackoffDelayMS > 86400000:
		return fmt.Errorf("%w: callback_backoff_delay_ms must be between 1 and 86400000", ErrInvalid)
	case a.MaxCallbackBackoffDelayMS < a.CallbackBackoffDelayMS || a.MaxCallbackBackoffDelayMS > 86400000:
		return fmt.Errorf("%w: max_callback_backoff_delay_ms (%d) must be between callback_backoff_delay_ms (%d) and 86400000",
			ErrInvalid, a.MaxCallbackBackoffDelayMS, a.CallbackBackoffDelayMS)
	}
	return nil
}

const rowName = "application"

// Load reads the effective settings: defaults overlaid with stored overrides.
func Load(ctx context.Context, q cluster.Querier) (Application, error) {
	a := Defaults()
	err := getRow(ctx, q, rowName, &a)
	return a, err
}

// getRow decodes the settings row name into doc, leaving doc as it is
// when there is no such row.
func getRow(ctx context.Context, q cluster.Querier, name string, doc any) error {
	var raw string
	err := q.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = ?`, name).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load settings row %s: %w", name, err)
	}
	if err := json.Unmarshal([]byte(raw), doc); err != nil {
		return fmt.Errorf("load settings row %s: stored document is not valid: %w", name, err)
	}
	return nil
}

// Patch merges patch (a JSON object of the original's fields) into the
// stored settings, validates the result and bumps settings_version. q
// should be the primary master's fenced transaction, so nothing is written
// on error. The body is checked against the OpenAPI document's
// ApplicationSettings schema first: a refusal is an *openapi.Invalid with
// the original's code; a rule across fields fails with ErrInvalid.
func Patch(ctx context.Context, q cluster.Querier, patch []byte) (Application, error) {
	if inv := openapi.Validate("ApplicationSettings", patch); inv != nil {
		return Application{}, inv
	}
	body, err := normalize(patch)
	if err != nil {
		return Application{}, err
	}
	cur, err := Load(ctx, q)
	if err != nil {
		return cur, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
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

// normalize turns the original's older spellings into the document's:
// db_garbagecollector_enable (before v2.37) is garbagecollector_enable's
// messages switch, and wa_id is read-only (a client that sends back what
// GET gave it is not refused; the value is ignored).
func normalize(patch []byte) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(patch, &doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	delete(doc, "wa_id")
	old, ok := doc["db_garbagecollector_enable"]
	if !ok {
		return json.Marshal(doc)
	}
	delete(doc, "db_garbagecollector_enable")
	var on bool
	if err := json.Unmarshal(old, &on); err != nil {
		return nil, fmt.Errorf("%w: db_garbagecollector_enable must be true or false", ErrInvalid)
	}
	gc := map[string]json.RawMessage{}
	if raw, ok := doc["garbagecollector_enable"]; ok {
		if err := json.Unmarshal(raw, &gc); err != nil {
			return nil, fmt.Errorf("%w: garbagecollector_enable must be an object", ErrInvalid)
		}
	}
	if m, ok := gc["messages"]; ok {
		var want bool
		if json.Unmarshal(m, &want) == nil && want != on {
			return nil, fmt.Errorf("%w: db_garbagecollector_enable and garbagecollector_enable.messages disagree", ErrInvalid)
		}
	}
	gc["messages"], _ = json.Marshal(on)
	doc["garbagecollector_enable"], _ = json.Marshal(gc)
	return json.Marshal(doc)
}

// Reset puts every setting back to its default.
func Reset(ctx context.Context, q cluster.Querier) (Application, error) {
	if _, err := q.ExecContext(ctx, `DELETE FROM settings WHERE name = ?`, rowName); err != nil {
		return Defaults(), fmt.Errorf("reset settings: %w", err)
	}
	return Defaults(), cluster.BumpSettings(ctx, q)
}

func store(ctx context.Context, q cluster.Querier, a Application) error {
	return putRow(ctx, q, rowName, a)
}

// putRow writes doc as the JSON value of the settings row name and bumps
// settings_version, so every node's cache notices within one poll.
func putRow(ctx context.Context, q cluster.Querier, name string, doc any) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, NOW(6))
		ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = NOW(6)`, name, string(b)); err != nil {
		return fmt.Errorf("store settings row %s: %w", name, err)
	}
	return cluster.BumpSettings(ctx, q)
}

// Cache keeps the effective settings fresh: Refresh on every push of a
// change, and a slow poll of settings_version.
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
	moved      chan struct{} // closed and replaced on every move of settings_version
	loaded     atomic.Bool   // a Refresh has read the cluster's settings
}

// SafetyPoll is how often a Cache re-reads the cluster row by itself. The
// primary master pushes every change (package changes) and the node calls
// Refresh at once; this poll only catches a push that was lost, so it is
// slow: one single-row read per node every 10 s (README, "Idle cost").
const SafetyPoll = 10 * time.Second

// NewCache makes a cache polling every interval (SafetyPoll when zero), starting from defaults.
func NewCache(db *sql.DB, interval time.Duration, log *slog.Logger) *Cache {
	if interval <= 0 {
		interval = SafetyPoll
	}
	c := &Cache{db: db, interval: interval, log: log, moved: make(chan struct{})}
	d := Defaults()
	c.cur.Store(&d)
	return c
}

// Layout returns the cluster's shard count and the shard map version it
// was read at, as of the last poll (0, 0 before the first).
func (c *Cache) Layout() (shards int, mapVersion int64) {
	return int(c.shards.Load()), c.mapVersion.Load()
}

// Version is the settings_version the current settings were read at (0
// before the first poll). It moves on a change of any settings row, so
// what a node keeps from another row (media providers, a certificate) is
// re-read only when it moves.
func (c *Cache) Version() int64 { return c.version.Load() }

// Get returns the current settings.
func (c *Cache) Get() Application { return *c.cur.Load() }

// Loaded reports whether Get returns the cluster's settings: a Refresh has
// succeeded. Before that it returns the defaults, which a decision that
// drops something (a status no webhook wants) must not take for the
// cluster's.
func (c *Cache) Loaded() bool { return c.loaded.Load() }

// Moved returns a channel closed at the next move of settings_version: a
// change of any settings row, Application's or another (a certificate,
// the media providers, the webhook CA), and at a change of the shard
// count (Layout; the claim holder passes it on to its plugin at once,
// whose network moves events between shards then). A loop sleeping one interval
// wakes up to the new settings at once, and re-reads what it uses: a row
// it does not use wakes it for nothing, which is rare (an administrator's
// change) and cheap.
func (c *Cache) Moved() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moved
}

// wakeMoved closes the channel Moved returned and makes the next one.
func (c *Cache) wakeMoved() {
	c.mu.Lock()
	close(c.moved)
	c.moved = make(chan struct{})
	c.mu.Unlock()
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
	recounted := false
	if st.MapVersion >= c.mapVersion.Load() {
		old := c.shards.Swap(int64(st.Shards))
		recounted = old != 0 && old != int64(st.Shards)
		c.mapVersion.Store(st.MapVersion)
	}
	if st.SettingsVersion == c.version.Load() {
		c.loaded.Store(true)
		if recounted {
			c.wakeMoved()
		}
		return nil
	}
	a, err := Load(ctx, c.db)
	if err != nil {
		return err
	}
	old := c.cur.Swap(&a)
	c.version.Store(st.SettingsVersion)
	c.loaded.Store(true)
	c.wakeMoved()
	if !reflect.DeepEqual(*old, a) {
		c.log.Info("settings changed", "heartbeat_interval", a.HeartbeatInterval, "unhealthy_interval", a.UnhealthyInterval,
			"webhook", a.Webhooks.URL != "", "callback_persist", a.CallbackPersist, "log_level", a.LogLevel, "verbose_logging", a.VerboseLogging)
		c.mu.Lock()
		fs := append([]func(Application){}, c.onChange...)
		c.mu.Unlock()
		for _, f := range fs {
			f(a)
		}
	}
	return nil
}

// Reload refreshes now, bounded in time: a pushed change (package
// changes' Follower.Reload). A failure leaves the safety poll to retry.
func (c *Cache) Reload(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Refresh(qctx); err != nil && ctx.Err() == nil {
		c.log.Warn("settings reload after a pushed change failed; the next poll retries", "err", err)
	}
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
