# Sourced by the Kubernetes recipes (build.sh and conformance/build.sh) with $here set to the recipe's
# directory. Reads the pinned k8s.io/kubernetes version from $here/go.mod and sets:
#   version major minor   the pinned release (v1.36.3, 1, 36)
#   cache bin             the cache outside the repository and its bin directory for that release
#   stamp                 what ties a cached binary to the exact go.mod and go.sum it was built from
#   ldflags               upstream's release version stamping, so each program reports the version it is
# shellcheck shell=bash
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")
[[ $version =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { echo "build.sh: cannot read the k8s.io/kubernetes version from $here/go.mod" >&2; exit 1; }
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
cache=${PYNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pynode}
bin=$cache/upstream/$version/bin
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)  # content only, not the clone's path
ldflags="-s -w"
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $v.gitVersion=$version -X $v.gitMajor=$major -X $v.gitMinor=$minor"
  ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
done
