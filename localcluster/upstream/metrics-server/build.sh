#!/usr/bin/env bash
# Build metrics-server from its Go module at the release pinned in go.mod, into the
# cache outside the repository, as ../build.sh does for the Kubernetes programs.
# It is a test fixture (kubectl top against pykubelet's /metrics/resource), so
# `make up` never builds it; `python -m localcluster metrics-server` and the
# integration test do, on demand.
#
#   build.sh             build bin/metrics-server if the cache lacks it for this go.sum
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "require" && $2 == "sigs.k8s.io/metrics-server" { print $3 }' "$here/go.mod")
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build.sh: cannot read the sigs.k8s.io/metrics-server version from $here/go.mod" >&2; exit 1; }
cache=${PYNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pynode}
bin=$cache/upstream/metrics-server-$version/bin

if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi

stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
[[ -x $bin/metrics-server && $(cat "$bin/.metrics-server.stamp" 2>/dev/null) == "$stamp" ]] && exit 0

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; it is needed to build metrics-server" >&2; exit 1; }
echo "building metrics-server $version into $bin (a cold build takes several minutes)" >&2

# metrics-server's Makefile stamps its version into client-go's version package.
v=k8s.io/client-go/pkg/version
ldflags="-s -w -X $v.gitVersion=$version -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"

mkdir -p "$cache/upstream"
tmp=$(mktemp -d "$cache/upstream/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp/" sigs.k8s.io/metrics-server/cmd/metrics-server
mkdir -p "$bin"
mv -f "$tmp/metrics-server" "$bin/metrics-server"
echo "$stamp" > "$bin/.metrics-server.stamp"
