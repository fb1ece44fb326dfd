#!/usr/bin/env bash
# Build etcd from its Go module at the release pinned in go.mod (see ../build-module.sh), into the cache, for the
# e2e suite's etcd image (testimages.py). The cluster's own etcd stays Debian's package.
#
#   build.sh             build bin/etcd if the cache lacks it for this go.sum
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../build-module.sh" "$here" etcd go.etcd.io/etcd/server/v3 "${1:-go.etcd.io/etcd/server/v3}"
