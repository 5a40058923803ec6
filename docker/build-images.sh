#!/usr/bin/env bash
# Builds the four images (web, master, coreapp, simnet) from static binaries
# compiled here, so no base image is pulled: they are FROM scratch.
#
#   docker/build-images.sh [VERSION]     # default: git describe, else "dev"
#
# Tags multiconnect/<image>:VERSION, and :latest too when no VERSION is given.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
tags=(-t "multiconnect/TARGET:$version")
[ $# -eq 0 ] && tags+=(-t "multiconnect/TARGET:latest")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# CGO_ENABLED=0: static binaries for an image with no libc. The same
# setting as .ci/run's build, so the Go build cache serves both.
CGO_ENABLED=0 go build -ldflags "-s -w -X github.com/multiconnect/multiconnect/internal/release.Version=$version" \
  -o "$stage/" ./caddymodule/cmd/caddy ./master ./coreapp ./plugins/simnet/cmd/simnetd \
  ./plugins/simnet/cmd/transport-simnet ./internal/healthprobe
cp Caddyfile.example "$stage/Caddyfile"
mkdir -p "$stage/rootfs/tmp" "$stage/rootfs/etc/ssl/certs" "$stage/media"
chmod 1777 "$stage/rootfs/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\nmulticonnect:x:65532:65532:multiconnect:/tmp:/sbin/nologin\n' >"$stage/rootfs/etc/passwd"
printf 'root:x:0:\nmulticonnect:x:65532:\n' >"$stage/rootfs/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$stage/rootfs/etc/ssl/certs/"
cp docker/Dockerfile "$stage/Dockerfile"

for target in web master coreapp simnet; do
  echo "docker: building multiconnect/$target:$version"
  docker build -q --target "$target" --build-arg "VERSION=$version" "${tags[@]//TARGET/$target}" "$stage" >/dev/null
done
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep "^multiconnect/.*:$version"
