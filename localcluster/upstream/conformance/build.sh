#!/usr/bin/env bash
# Build the upstream conformance suite from the Go modules pinned in this directory's
# go.mod, into the same cache bin directory as ../build.sh (keyed by the Kubernetes version):
#
#   build.sh              e2e.test (go test -c k8s.io/kubernetes/test/e2e), ginkgo, and the programs
#                         of the test images: agnhost and nnp (the nonewprivs image's)
#   build.sh e2e.test     only the named programs; e2e_node.test (go test -c k8s.io/kubernetes/test/e2e_node,
#                         the node conformance suite of `make node-conformance`) is built only when named
#   build.sh --bin-dir    print the cache's bin directory and exit
#
# Version stamping is ../build.sh's, so e2e.test reports the version it tests. A program
# already built from this go.mod and go.sum is not rebuilt; cold, e2e.test takes minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../kubernetes-env.sh
source "$here/../kubernetes-env.sh"

if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi

declare -A package=(
  [e2e.test]=k8s.io/kubernetes/test/e2e
  [e2e_node.test]=k8s.io/kubernetes/test/e2e_node
  [ginkgo]=github.com/onsi/ginkgo/v2/ginkgo
  [agnhost]=k8s.io/kubernetes/test/images/agnhost
  [nnp]=k8s.io/kubernetes/test/images/nonewprivs
)
programs=("$@")
[[ ${#programs[@]} -gt 0 ]] || programs=(e2e.test ginkgo agnhost nnp)

missing=()
for p in "${programs[@]}"; do
  [[ -n ${package[$p]:-} ]] || { echo "build.sh: unknown program '$p' (one of: ${!package[*]})" >&2; exit 2; }
  [[ -x $bin/$p && $(cat "$bin/.$p.stamp" 2>/dev/null) == "$stamp" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; it is needed to build ${missing[*]}" >&2; exit 1; }
echo "building ${missing[*]} at Kubernetes $version into $bin (e2e.test takes several minutes cold)" >&2

mkdir -p "$cache/upstream" "$bin"
tmp=$(mktemp -d "$cache/upstream/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
for p in "${missing[@]}"; do
  if [[ $p == *.test ]]; then
    go test -c -trimpath -ldflags "$ldflags" -o "$tmp/$p" "${package[$p]}"
  else
    go build -trimpath -ldflags "$ldflags" -o "$tmp/$p" "${package[$p]}"
  fi
  mv -f "$tmp/$p" "$bin/$p"
  echo "$stamp" > "$bin/.$p.stamp"
done
