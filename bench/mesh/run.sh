#!/usr/bin/env bash
# Mesh benchmark, two parts, each comparing against baselines measured in the same run:
#  1. mesh_bench: mTLS handshakes per core and the latency and CPU mTLS adds to one raw hop,
#     next to plain TCP and one-way rustls TLS, on loopback;
#  2. mesh_hops: the proxy's backend path as `sluice up` wires it (router → [activator →]
#     replica gate), mesh off vs mTLS with attestation and an ALLOW policy: p50/p99 and CPU
#     per 10k requests at a fixed rate;
#  3. span_bench: what OTLP span export adds to a hop's telemetry (recording thread and whole
#     process CPU), metrics-only telemetry as the baseline, and drops counted on overflow.
# Usage: bench/mesh/run.sh [handshakes] [requests] [rate_per_s] [payload_bytes]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p sluice-mesh --example mesh_bench >&2
cargo build --release --locked -p sluice-router --example mesh_hops >&2
cargo build --release --locked -p sluice-mesh --example span_bench >&2
target="${CARGO_TARGET_DIR:-target}"
echo "# mesh benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
"$target/release/examples/mesh_bench" "${1:-3000}" "${2:-10000}" "${3:-1000}" "${4:-1024}"
echo
"$target/release/examples/mesh_hops" "${2:-10000}" "${3:-1000}" 16
echo
exec "$target/release/examples/span_bench" 200000
