#!/usr/bin/env bash
# Spillway beside the bare aiohttp floor (and the peers, when installed) on one core each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
shared="${SPILLWAY_SHARED_BENCH:-$root/../shared/bench}"
rounds="${1:-3}"
cd "$root"
exec python3 "$shared/anchors.py" --rounds "$rounds" ${ONLY:+--only "$ONLY"} \
  --router-cmd "$(command -v spillway) serve --config $here/spillway-bench.yaml --port {port}"
