#!/usr/bin/env bash
# Build upstream Kubernetes programs from the Go modules pinned in go.mod, into a
# cache outside the repository keyed by the Kubernetes version.
#
#   build.sh                      kube-apiserver kube-controller-manager kube-scheduler kubectl
#   build.sh kubelet kube-proxy   only the named programs (any of the six `tool` lines)
#   build.sh --bin-dir            print the cache's bin directory and exit
#
# A program already in the cache for this version and this go.sum is not rebuilt,
# so a warm run takes well under a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kubernetes-env.sh
source "$here/kubernetes-env.sh"

if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi

programs=("$@")
[[ ${#programs[@]} -gt 0 ]] || programs=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

missing=()
for p in "${programs[@]}"; do
  grep -qx "	k8s.io/kubernetes/cmd/$p" "$here/go.mod" || { echo "build.sh: unknown program '$p' (not a tool line in go.mod)" >&2; exit 2; }
  [[ -x $bin/$p && $(cat "$bin/.$p.stamp" 2>/dev/null) == "$stamp" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; it is needed to build ${missing[*]}" >&2; exit 1; }
echo "building ${missing[*]} at Kubernetes $version into $bin (a cold build takes several minutes)" >&2

tmp=$(mktemp -d "$cache/upstream/.build.XXXXXX" 2>/dev/null || { mkdir -p "$cache/upstream" && mktemp -d "$cache/upstream/.build.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
cd "$here"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  $(printf 'k8s.io/kubernetes/cmd/%s ' "${missing[@]}")
mkdir -p "$bin"
for p in "${missing[@]}"; do
  mv -f "$tmp/$p" "$bin/$p"
  echo "$stamp" > "$bin/.$p.stamp"
done
