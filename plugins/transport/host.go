package transport

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
)

// startTimeout bounds how long Start waits for a plugin to announce itself.
// It is short because the coreapp retries, and a plugin that takes longer
// than this to start is broken rather than slow.
const startTimeout = 10 * time.Second

// Plugin is a running transport plugin process, seen from its host.
type Plugin struct {
	client *plugin.Client
	t      Transport
	pid    int
}

// Start launches the plugin binary at path and connects to it over gRPC.
// The plugin's log lines are re-logged through logger with their own
// levels and attributes.
//
// The plugin is started with Pdeathsig=SIGKILL, so the kernel kills it (and
// closes its network connection) when the host dies, even by SIGKILL.
// Restarting a plugin that crashed is the caller's job; Exited tells when.
//
// procs is the plugin's GOMAXPROCS (see ProcsFromEnv); 0 leaves it what
// the host's environment says, or Go's default.
func Start(path string, procs int, logger *slog.Logger) (*Plugin, error) {
	cmd := exec.Command(path)
	skipHostEnv := false
	if procs > 0 {
		// go-plugin appends the host's environment after cmd.Env, and the
		// last GOMAXPROCS would win: the host's is left out instead.
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(procs))
		skipHostEnv = true
	}
	// Pdeathsig fires when the thread that forked the child exits. Go
	// only ends threads whose goroutine exits while locked to it, which
	// nothing here does; Serve's parent watch covers the rest.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          PluginMap,
		Cmd:              cmd,
		SkipHostEnv:      skipHostEnv,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newHCLogger(logger.Handler(), ""),
		StartTimeout:     startTimeout,
		GRPCDialOptions:  grpcDialOptions,
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("start transport plugin %s: %w", path, err)
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("dispense transport from plugin %s: %w", path, err)
	}
	t, ok := raw.(Transport)
	if !ok {
		client.Kill()
		return nil, fmt.Errorf("plugin %s: dispensed %T, not a Transport", path, raw)
	}
	return &Plugin{client: client, t: t, pid: cmd.Process.Pid}, nil
}

// Transport returns the plugin's Transport. Calls fail once the plugin has
// exited; a restarted plugin has a new Plugin and a new Transport.
func (p *Plugin) Transport() Transport { return p.t }

// Exited reports whether the plugin process has exited (crashed, killed,
// or stopped by Kill). Once true, any connection it held is closed.
func (p *Plugin) Exited() bool { return p.client.Exited() }

// Pid is the plugin's process ID.
func (p *Plugin) Pid() int { return p.pid }

// Kill stops the plugin: it asks it to shut down, SIGKILLs it if it has
// not exited within two seconds, and returns once the process is gone.
// It is safe to call more than once, and after the plugin crashed.
func (p *Plugin) Kill() { p.client.Kill() }
