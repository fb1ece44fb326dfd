#!/usr/bin/env bash
# Build CoreDNS from its Go module at the release pinned in go.mod (see ../build-module.sh), into the cache.
# `make up` builds it (about 3 minutes cold, then seconds) and runs it as the cluster DNS.
#
#   build.sh             build bin/coredns if the cache lacks it for this go.sum
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../build-module.sh" "$here" coredns github.com/coredns/coredns "${1:-github.com/coredns/coredns}" \
  "-X github.com/coredns/coredns/coremain.GitCommit=\$version"
