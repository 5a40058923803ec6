package delivery

import (
	"fmt"
	"log/slog"
	"strconv"
	"time"
)

// Policy is what the engine does with a message whose outcome stayed
// unknown (no answer, no status webhook) for Config.UnknownWait.
type Policy string

const (
	// PolicyResend sends it again: at-least-once. It duplicates only when
	// the first request was processed and its status webhook took longer
	// than UnknownWait to reach us.
	PolicyResend Policy = "resend"
	// PolicyFail reports it failed: at-most-once. It loses every message
	// whose request never reached Meta.
	PolicyFail Policy = "fail"
	// PolicyWait keeps waiting for a status up to UnknownMaxWait (a
	// webhook path that is slow or down for a while), then fails it:
	// at-most-once like fail, losing fewer processed messages to a slow
	// webhook, at the price of holding the recipient's later messages.
	PolicyWait Policy = "wait"
)

// ParsePolicy reads MC_CLOUDAPI_UNKNOWN_OUTCOME; "" is the default.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "":
		return DefaultPolicy, nil
	case PolicyResend, PolicyFail, PolicyWait:
		return Policy(s), nil
	}
	return "", fmt.Errorf("MC_CLOUDAPI_UNKNOWN_OUTCOME=%q: want resend, fail or wait", s)
}

// Defaults (README, "Cloud API transport").
const (
	DefaultThroughput     = 80
	MaxThroughput         = 1000
	DefaultPolicy         = PolicyResend
	DefaultUnknownWait    = 30 * time.Second
	DefaultUnknownMaxWait = 10 * time.Minute
	DefaultTokenRetry     = 30 * time.Second
	DefaultRetries        = 3
	DefaultConcurrency    = 16
)

// Config tunes an Engine. Zero values take the defaults above.
type Config struct {
	// Throughput is the number's limit in messages per second, shared
	// by all shards (see SetLayout); 0 means unlimited. Unlimited must
	// be asked for with Unlimited, so that a zero Config is safe.
	Throughput int
	Unlimited  bool
	// Shard and Shards: this engine's shard and the cluster's count; the
	// engine's budget is its share of Throughput (SetLayout changes it).
	Shard, Shards int
	// Node names the coreapp in the attempt records (SetNode changes it).
	Node string

	// UnknownWait is how long a message whose outcome is unknown waits
	// for a status webhook naming it before Policy applies.
	UnknownWait time.Duration
	Policy      Policy
	// UnknownMaxWait bounds PolicyWait: after it the message fails.
	UnknownMaxWait time.Duration

	// Retries is how many times one Send posts a message that got a
	// retryable error (1, 2, 131000, 5xx) before leaving it Later.
	Retries int
	// RetryInitial, ThrottleInitial, PairInitial start the exponential
	// backoffs (with jitter) of a retry, a throttled number and a
	// pair-limited recipient; each doubles up to its Max.
	RetryInitial, RetryMax       time.Duration
	ThrottleInitial, ThrottleMax time.Duration
	PairInitial, PairMax         time.Duration
	// TokenRetry is how often a stopped token (190) is tried again.
	TokenRetry time.Duration
	// Concurrency bounds the requests in flight (different recipients;
	// one recipient's are always one at a time, in order). Default: half
	// the throughput, at least 16 (64 when unlimited).
	Concurrency int

	Log *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Throughput == 0 && !c.Unlimited {
		c.Throughput = DefaultThroughput
	}
	if c.Shards < 1 {
		c.Shards = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.UnknownWait, DefaultUnknownWait)
	def(&c.UnknownMaxWait, DefaultUnknownMaxWait)
	def(&c.TokenRetry, DefaultTokenRetry)
	def(&c.RetryInitial, 200*time.Millisecond)
	def(&c.RetryMax, 5*time.Second)
	def(&c.ThrottleInitial, time.Second)
	def(&c.ThrottleMax, time.Minute)
	// Meta allows about one message every 6 seconds to one user.
	def(&c.PairInitial, 6*time.Second)
	def(&c.PairMax, time.Minute)
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	if c.Retries <= 0 {
		c.Retries = DefaultRetries
	}
	if c.Concurrency <= 0 {
		// Little's law: requests in flight = rate × latency. The Graph
		// API answers in 0.1 to 0.5 s, so the number's limit needs up to
		// half of it in flight (80/s: 40); unlimited gets 64.
		c.Concurrency = DefaultConcurrency
		switch {
		case c.Unlimited || c.Throughput <= 0:
			c.Concurrency = 64
		case c.Throughput/2 > c.Concurrency:
			c.Concurrency = min(c.Throughput/2, 500)
		}
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// ConfigFromEnv reads the engine's settings from the environment
// (getenv is os.Getenv in the plugin): MC_CLOUDAPI_THROUGHPUT,
// MC_CLOUDAPI_UNKNOWN_OUTCOME, MC_CLOUDAPI_UNKNOWN_WAIT,
// MC_CLOUDAPI_UNKNOWN_MAX_WAIT and MC_CLOUDAPI_TOKEN_RETRY (durations in
// Go syntax: 30s, 10m).
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	var c Config
	if v := getenv("MC_CLOUDAPI_THROUGHPUT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxThroughput {
			return c, fmt.Errorf("MC_CLOUDAPI_THROUGHPUT=%q: want 0 (unlimited) to %d messages per second", v, MaxThroughput)
		}
		c.Throughput, c.Unlimited = n, n == 0
	}
	p, err := ParsePolicy(getenv("MC_CLOUDAPI_UNKNOWN_OUTCOME"))
	if err != nil {
		return c, err
	}
	c.Policy = p
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{
		{"MC_CLOUDAPI_UNKNOWN_WAIT", &c.UnknownWait},
		{"MC_CLOUDAPI_UNKNOWN_MAX_WAIT", &c.UnknownMaxWait},
		{"MC_CLOUDAPI_TOKEN_RETRY", &c.TokenRetry},
	} {
		v := getenv(d.name)
		if v == "" {
			continue
		}
		x, err := time.ParseDuration(v)
		if err != nil || x <= 0 {
			return c, fmt.Errorf("%s=%q: want a positive duration such as 30s", d.name, v)
		}
		*d.to = x
	}
	return c, nil
}
