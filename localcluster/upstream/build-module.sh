#!/usr/bin/env bash
# Build one program from a Go module pinned in a recipe directory's go.mod, into the cache
# outside the repository, as build.sh does for the Kubernetes programs. The recipes that
# use it (metrics-server/, coredns/) each call it from their own build.sh:
#
#   build-module.sh DIR NAME MODULE PACKAGE [LDFLAGS]   build bin/NAME unless cached for DIR's go.sum
#   build-module.sh DIR NAME MODULE --bin-dir          print the cache's bin directory and exit
#
# The binary lands in $PYNODE_CACHE/upstream/NAME-<version>/bin/NAME; LDFLAGS may use
# $version (the pinned version), substituted here.
set -euo pipefail

dir=$1 name=$2 module=$3 package=$4 ldflags=${5:-}
version=$(awk -v m="$module" '$1 == "require" && $2 == m { print $3 }' "$dir/go.mod")
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build-module.sh: cannot read the $module version from $dir/go.mod" >&2; exit 1; }
cache=${PYNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pynode}
bin=$cache/upstream/$name-$version/bin

if [[ $package == --bin-dir ]]; then echo "$bin"; exit 0; fi

stamp=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)
[[ -x $bin/$name && $(cat "$bin/.$name.stamp" 2>/dev/null) == "$stamp" ]] && exit 0

command -v go >/dev/null || { echo "build-module.sh: 'go' is not on PATH; it is needed to build $name" >&2; exit 1; }
echo "building $name $version into $bin (a cold build takes several minutes)" >&2

mkdir -p "$cache/upstream"
tmp=$(mktemp -d "$cache/upstream/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$dir"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w ${ldflags//\$version/$version}" -o "$tmp/$name" "$package"
mkdir -p "$bin"
mv -f "$tmp/$name" "$bin/$name"
echo "$stamp" > "$bin/.$name.stamp"
