#!/usr/bin/env bash
# Mesh benchmark: mTLS handshakes per core and the latency and CPU mTLS adds to one hop,
# next to plain TCP and one-way rustls TLS baselines measured in the same run, on loopback.
# Usage: bench/mesh/run.sh [handshakes] [requests] [rate_per_s] [payload_bytes]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p sluice-mesh --example mesh_bench >&2
target="${CARGO_TARGET_DIR:-target}"
echo "# mesh benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
exec "$target/release/examples/mesh_bench" "${1:-3000}" "${2:-10000}" "${3:-1000}" "${4:-1024}"
