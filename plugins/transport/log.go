package transport

import (
	"context"
	"io"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
)

// go-plugin logs through hclog on both sides: the host parses each line the
// plugin writes to stderr as hclog JSON (@level, @message, @timestamp and
// the attributes) and re-logs it through the host's hclog.Logger. This file
// bridges both ends to log/slog: NewPluginLogger makes a plugin's slog
// output parseable, and hcLogger hands what go-plugin logs to the host's
// slog handler.

// levelTrace is hclog's Trace level on the slog scale (below Debug).
const levelTrace = slog.LevelDebug - 4

// hclogTimeFormat is the only timestamp layout go-plugin's host accepts.
const hclogTimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// NewPluginLogger returns the logger a plugin should use (and install with
// slog.SetDefault before calling Serve). It writes JSON lines to the
// process's stderr in the shape go-plugin's host parses, so the host logs
// them at their own level with their attributes, instead of as opaque
// debug text. Call it before Serve, which redirects os.Stderr.
func NewPluginLogger(level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format(hclogTimeFormat))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			case slog.LevelKey:
				lvl, _ := a.Value.Any().(slog.Level)
				return slog.String("@level", hclogLevel(lvl).String())
			}
			return a
		},
	}))
}

func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l < slog.LevelDebug:
		return hclog.Trace
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	}
	return hclog.Error
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// hcLogger is an hclog.Logger writing to a slog.Handler.
type hcLogger struct {
	h    slog.Handler
	name string
	args []any
}

var _ hclog.Logger = (*hcLogger)(nil)

func newHCLogger(h slog.Handler, name string) *hcLogger { return &hcLogger{h: h, name: name} }

func (l *hcLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	sl := slogLevel(level)
	ctx := context.Background()
	if !l.h.Enabled(ctx, sl) {
		return
	}
	r := slog.NewRecord(time.Now(), sl, msg, 0)
	if l.name != "" {
		r.AddAttrs(slog.String("logger", l.name))
	}
	r.Add(l.args...)
	r.Add(args...)
	_ = l.h.Handle(ctx, r) // a failing log sink has nowhere to report to
}

func (l *hcLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *hcLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *hcLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *hcLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *hcLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *hcLogger) enabled(level hclog.Level) bool {
	return l.h.Enabled(context.Background(), slogLevel(level))
}

func (l *hcLogger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *hcLogger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *hcLogger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *hcLogger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *hcLogger) IsError() bool { return l.enabled(hclog.Error) }

func (l *hcLogger) ImpliedArgs() []any { return l.args }

func (l *hcLogger) With(args ...any) hclog.Logger {
	return &hcLogger{h: l.h, name: l.name, args: append(append([]any(nil), l.args...), args...)}
}

func (l *hcLogger) Name() string { return l.name }

func (l *hcLogger) Named(name string) hclog.Logger {
	if l.name != "" {
		name = l.name + "." + name
	}
	return l.ResetNamed(name)
}

func (l *hcLogger) ResetNamed(name string) hclog.Logger {
	return &hcLogger{h: l.h, name: name, args: l.args}
}

// SetLevel does nothing: the level belongs to the slog handler's owner.
func (l *hcLogger) SetLevel(hclog.Level) {}

// GetLevel reports the lowest level the handler takes. go-plugin uses it to
// skip parsing plugin lines that would be dropped anyway.
func (l *hcLogger) GetLevel() hclog.Level {
	for _, lv := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if l.enabled(lv) {
			return lv
		}
	}
	return hclog.Off
}

func (l *hcLogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(l.h, slog.LevelInfo)
}

func (l *hcLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return l.StandardLogger(opts).Writer()
}
