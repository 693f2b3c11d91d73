#!/usr/bin/env bash
# The scaling table: put throughput of a swarmkv cluster on this machine with 1, 4,
# 16 and 64 partitions (3 nodes), and with 3 against 5 nodes (64 partitions).
#
#   bash bench/scaling.sh                 # builds the release binary, prints the table
#   CLIENTS=16 SECONDS_PER_CASE=10 bash bench/scaling.sh
#
# Every case starts a fresh cluster on 127.0.0.1 (mDNS off), runs `swarmkv bench put` against
# all its gateways, and stops the nodes it started (by PID). Both the nodes and the bench share
# this machine's cores, so read the rows as ratios to each other, not as absolute capacity.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-64}
SECONDS_PER_CASE=${SECONDS_PER_CASE:-20}
KEYS=${KEYS:-1000}
OPS=${OPS:-200000}
BASE_PORT=${BASE_PORT:-47100}
CASES=${CASES:-"3:1 3:4 3:16 3:64 5:64"}
BIN=target/release/swarmkv

cargo build --release --bin swarmkv >&2
WORK=$(mktemp -d)
PIDS=()

stop_nodes() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

# Starts N nodes with P partitions; sets ENDPOINTS to the bench's target flags.
start_cluster() {
  local n=$1 p=$2 dir=$WORK/c$1-$2 i join=() peer
  ENDPOINTS=()
  for ((i = 0; i < n; i++)); do
    mkdir -p "$dir/n$i"
    env -u RUST_LOG "$BIN" start --no-mdns --partitions "$p" --expect "$n" \
      --listen "/ip4/127.0.0.1/tcp/$((BASE_PORT + i))" --http "127.0.0.1:$((BASE_PORT + 50 + i))" \
      --data "$dir/n$i/data" "${join[@]}" >"$dir/n$i.log" 2>&1 </dev/null &
    PIDS+=($!)
    ENDPOINTS+=(--endpoint "http://127.0.0.1:$((BASE_PORT + 50 + i))")
    if ((i == 0)); then
      for _ in $(seq 1 200); do
        peer=$(sed -n 's/^peer id *//p' "$dir/n0.log" | head -1)
        [[ -n $peer ]] && break
        sleep 0.05
      done
      [[ -n $peer ]] || { echo "node 0 printed no peer id" >&2; return 1; }
      join=(--join "/ip4/127.0.0.1/tcp/$BASE_PORT/p2p/$peer")
    fi
  done
  local ok live
  for _ in $(seq 1 240); do
    ok=1
    for ((i = 0; i < n; i++)); do
      local url="http://127.0.0.1:$((BASE_PORT + 50 + i))"
      curl -sf --max-time 2 "$url/readyz" >/dev/null || { ok=0; break; }
      live=$(curl -sf --max-time 2 "$url/v1/status" | grep -o '"reachable":true' | wc -l || true)
      ((live >= n)) || { ok=0; break; }
    done
    ((ok)) && return 0
    sleep 0.25
  done
  echo "the $n-node cluster with $p partitions did not become ready" >&2
  return 1
}

echo "swarmkv scaling, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, put of 256-byte values," \
  "$CLIENTS clients, $KEYS keys, ${SECONDS_PER_CASE} s per case, every node fsyncs its log"
printf '%-6s %-11s %10s %9s %9s\n' nodes partitions ops/s p50_ms p99_ms
for case in $CASES; do
  n=${case%%:*}
  p=${case##*:}
  start_cluster "$n" "$p"
  line=$("$BIN" bench put --clients "$CLIENTS" --ops "$OPS" --keys "$KEYS" \
    --max-seconds "$SECONDS_PER_CASE" "${ENDPOINTS[@]}" 2>/dev/null | grep '^RESULT' | tail -1 || true)
  stop_nodes
  if [[ -z $line ]]; then
    printf '%-6s %-11s %10s\n' "$n" "$p" FAILED
    continue
  fi
  ops=$(sed -n 's/.*ops\/s=\([^ ]*\).*/\1/p' <<<"$line")
  p50=$(sed -n 's/.*p50_ms=\([^ ]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.*p99_ms=\([^ ]*\).*/\1/p' <<<"$line")
  printf '%-6s %-11s %10s %9s %9s\n' "$n" "$p" "$ops" "$p50" "$p99"
done
