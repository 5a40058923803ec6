// Command caddy is Caddy with the multiconnect gateway module: what
// `xcaddy build --with github.com/multiconnect/multiconnect/caddymodule`
// generates, kept here so `go build -o bin/ ./...` yields bin/caddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/multiconnect/multiconnect/caddymodule"
)

func main() {
	caddycmd.Main()
}
