package caddymodule

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// The gateway's own log lines (the multiconnect module's, not Caddy's
// access or server logs) follow the cluster's log_level and
// verbose_logging settings as the masters' and coreapps' do: the view
// follows the primary master's change feed (and polls settings_version
// every settings.SafetyPoll, as the nodes do) and moves one zap level that
// every logger of the module checks.

// zapLevel is the zap level of a slog level (zap has no level between
// its named ones; slog's are 4 apart from debug -4 to error 8).
func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l <= slog.LevelDebug:
		return zapcore.DebugLevel
	case l <= slog.LevelInfo:
		return zapcore.InfoLevel
	case l <= slog.LevelWarn:
		return zapcore.WarnLevel
	}
	return zapcore.ErrorLevel
}

// newModuleLevel starts at MC_LOG_LEVEL (info when unset), as a node does.
func newModuleLevel() (zap.AtomicLevel, *slog.Level) {
	floor, _ := node.LogFloor()
	lvl := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	if floor != nil {
		lvl.SetLevel(zapLevel(*floor))
	}
	return lvl, floor
}

// withLevel makes log obey lvl rather than the level of the Caddy log it
// writes to: a line lvl admits is written even when that log's level is
// higher (Caddy logs at INFO unless configured otherwise), so a switch to
// debug is seen without reconfiguring Caddy.
func withLevel(log *zap.Logger, lvl zap.AtomicLevel) *zap.Logger {
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return &levelCore{Core: c, level: lvl} }))
}

type levelCore struct {
	zapcore.Core
	level zap.AtomicLevel
}

func (c *levelCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) }

func (c *levelCore) With(fields []zapcore.Field) zapcore.Core {
	return &levelCore{Core: c.Core.With(fields), level: c.level}
}

func (c *levelCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !c.level.Enabled(e.Level) {
		return ce
	}
	if c.Core.Enabled(e.Level) {
		return c.Core.Check(e, ce)
	}
	return ce.AddCore(e, c.Core)
}

// followLogLevel keeps cache current until ctx ends (pushed changes reload
// it at once, see view.go) and moves v.level with it; each change is
// logged at the new level (see settings.FollowLevel).
func (v *clusterView) followLogLevel(ctx context.Context, cache *settings.Cache) {
	cache.OnChange(func(a settings.Application) {
		l := settings.Effective(a, v.levelFloor)
		if zapLevel(l) == v.level.Level() {
			return
		}
		v.level.SetLevel(zapLevel(l))
		if ce := v.log.Check(zapLevel(l), "log level set"); ce != nil {
			ce.Write(zap.String("level", l.String()), zap.String("log_level", a.LogLevel), zap.Bool("verbose_logging", a.VerboseLogging))
		}
	})
	cache.Run(ctx)
}
