#!/usr/bin/env bash
# Build the upstream conformance suite from the Go modules pinned in this directory's
# go.mod, into the same cache bin directory as ../build.sh (keyed by the Kubernetes version):
#
#   build.sh              e2e.test (go test -c k8s.io/kubernetes/test/e2e), ginkgo, and the programs
#                         of the test images: agnhost and nnp (the nonewprivs image's)
#   build.sh e2e.test     only the named programs
#   build.sh --bin-dir    print the cache's bin directory and exit
#
# Version stamping is ../build.sh's, so e2e.test reports the version it tests. A program
# already built from this go.mod and go.sum is not rebuilt; cold, e2e.test takes minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")
[[ $version =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { echo "build.sh: cannot read the k8s.io/kubernetes version from $here/go.mod" >&2; exit 1; }
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
cache=${PYNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pynode}
bin=$cache/upstream/$version/bin

if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi

declare -A package=(
  [e2e.test]=k8s.io/kubernetes/test/e2e
  [ginkgo]=github.com/onsi/ginkgo/v2/ginkgo
  [agnhost]=k8s.io/kubernetes/test/images/agnhost
  [nnp]=k8s.io/kubernetes/test/images/nonewprivs
)
programs=("$@")
[[ ${#programs[@]} -gt 0 ]] || programs=(e2e.test ginkgo agnhost nnp)

stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
missing=()
for p in "${programs[@]}"; do
  [[ -n ${package[$p]:-} ]] || { echo "build.sh: unknown program '$p' (one of: ${!package[*]})" >&2; exit 2; }
  [[ -x $bin/$p && $(cat "$bin/.$p.stamp" 2>/dev/null) == "$stamp" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; it is needed to build ${missing[*]}" >&2; exit 1; }
echo "building ${missing[*]} at Kubernetes $version into $bin (e2e.test takes several minutes cold)" >&2

ldflags="-s -w"
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $v.gitVersion=$version -X $v.gitMajor=$major -X $v.gitMinor=$minor"
  ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
done

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
