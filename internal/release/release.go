// Package release names the build: every daemon reports it (logs,
// /v1/support, the meta of every answer). It imports nothing, so any package
// may use it.
package release

// Version is the release, set at build time with
// -ldflags "-X github.com/multiconnect/multiconnect/internal/release.Version=v1.2.3".
var Version = "dev"
