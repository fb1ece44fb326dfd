#!/usr/bin/env bash
# Build the sample-apiserver (the e2e Aggregator spec's extension API server) from its Go module at the release
# pinned in go.mod (see ../build-module.sh), into the cache; `make conformance` images it (testimages.py).
#
#   build.sh             build bin/sample-apiserver if the cache lacks it for this go.sum
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../build-module.sh" "$here" sample-apiserver k8s.io/sample-apiserver "${1:-k8s.io/sample-apiserver}"
