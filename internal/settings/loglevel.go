package settings

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// ParseLevel reads a log level as MC_LOG_LEVEL or log_level writes it
// (debug, info, warning or warn, error).
func ParseLevel(s string) (slog.Level, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "warn" {
		s = "warning"
	}
	if l, ok := LogLevels[s]; ok {
		return l, nil
	}
	return slog.LevelInfo, fmt.Errorf("log level %q is not one of debug, info, warning, error", s)
}

// Effective is the level a node logs at: the settings' level, or floor
// (the node's MC_LOG_LEVEL) when that is more verbose, so an operator
// debugging one node keeps its debug lines whatever the cluster says.
func Effective(a Application, floor *slog.Level) slog.Level {
	l := a.Level()
	if floor != nil && *floor < l {
		return *floor
	}
	return l
}

// FollowLevel keeps v at the level the settings ask for (see Effective),
// from the cache's next change on: every node kind calls it once at start,
// so PATCH /v1/settings/application with log_level or verbose_logging
// reaches every node's logs within one settings poll. Each change is
// logged at the new level itself, so a switch to debug shows as a debug
// line and a log reader can tell when a node obeyed.
func (c *Cache) FollowLevel(v *slog.LevelVar, floor *slog.Level, log *slog.Logger) {
	apply := func(a Application) {
		l := Effective(a, floor)
		if l == v.Level() {
			return
		}
		v.Set(l)
		log.Log(context.Background(), l, "log level set", "level", l.String(),
			"log_level", a.LogLevel, "verbose_logging", a.VerboseLogging)
	}
	c.OnChange(apply)
}
