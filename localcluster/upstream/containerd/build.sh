#!/usr/bin/env bash
# Build the nodes' container runtime from the Go modules pinned in go.mod, into the cache outside the
# repository: containerd, its runc shim and ctr (static, without the btrfs/devmapper/zfs snapshotters that
# need C libraries), and runc (cgo, with seccomp through Debian's libseccomp).
#
#   build.sh             build what the cache lacks for this go.sum (seconds when cached, ~2 min cold)
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version_of() { awk -v m="$1" '($1 == "require" && $2 == m) { print $3 } ($1 == m) { print $2 }' "$here/go.mod" | head -1; }
containerd=$(version_of github.com/containerd/containerd/v2)
runc=$(version_of github.com/opencontainers/runc)
[[ $containerd =~ ^v2\.[0-9]+\.[0-9]+$ && $runc =~ ^v1\.[0-9]+\.[0-9]+$ ]] || {
  echo "containerd/build.sh: cannot read the containerd and runc versions from $here/go.mod" >&2; exit 1; }
cache=${PYNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pynode}
bin=$cache/upstream/containerd-$containerd-runc-$runc/bin
if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi

programs=(containerd containerd-shim-runc-v2 ctr runc)
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
missing=()
for p in "${programs[@]}"; do
  [[ -x $bin/$p && $(cat "$bin/.$p.stamp" 2>/dev/null) == "$stamp" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

command -v go >/dev/null || { echo "containerd/build.sh: 'go' is not on PATH; it is needed to build ${missing[*]}" >&2; exit 1; }
echo "building ${missing[*]} (containerd $containerd, runc $runc) into $bin (a cold build takes about 2 minutes)" >&2
mkdir -p "$cache/upstream"
tmp=$(mktemp -d "$cache/upstream/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
v=github.com/containerd/containerd/v2/version
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X $v.Version=$containerd -X $v.Revision=$containerd -X $v.Package=github.com/containerd/containerd/v2" \
  -o "$tmp/" github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  github.com/containerd/containerd/v2/cmd/ctr
# runc links libseccomp (Debian's libseccomp-dev and pkg-config, which `make deps` installs).
CGO_ENABLED=1 GOFLAGS=-mod=mod go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${runc#v}" \
  -o "$tmp/runc" github.com/opencontainers/runc
mkdir -p "$bin"
for p in "${programs[@]}"; do
  mv -f "$tmp/$p" "$bin/$p"
  echo "$stamp" > "$bin/.$p.stamp"
done
