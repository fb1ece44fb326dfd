#!/usr/bin/env bash
# Build metrics-server from its Go module at the release pinned in go.mod (see ../build-module.sh).
# It is a test fixture (kubectl top against pykubelet's /metrics/resource), so `make up` never
# builds it; `python -m localcluster metrics-server` and the integration test do, on demand.
#
#   build.sh             build bin/metrics-server if the cache lacks it for this go.sum
#   build.sh --bin-dir   print the cache's bin directory and exit
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# metrics-server's Makefile stamps its version into client-go's version package.
v=k8s.io/client-go/pkg/version
exec "$here/../build-module.sh" "$here" metrics-server sigs.k8s.io/metrics-server \
  "${1:-sigs.k8s.io/metrics-server/cmd/metrics-server}" \
  "-X $v.gitVersion=\$version -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
