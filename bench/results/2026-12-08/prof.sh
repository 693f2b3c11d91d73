#!/usr/bin/env bash
# Profile one swarmkv node at put c64: 3 nodes on 127.0.0.1 (ports 2591x/2592x), no mDNS.
# usage: prof.sh BIN OUTDIR [clients] [ops] [perf-seconds]
set -euo pipefail
BIN=$1 OUT=$2 C=${3:-64} OPS=${4:-200000} PS=${5:-12}
mkdir -p "$OUT"; rm -rf /tmp/prof-run; mkdir -p /tmp/prof-run
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/25911 --http 127.0.0.1:25921 --data /tmp/prof-run/n1 --expect 3 >/tmp/prof-run/n1.log 2>&1 & pids+=($!)
for _ in $(seq 100); do peer=$(sed -n 's/^peer id *//p' /tmp/prof-run/n1.log | head -1); [[ -n $peer ]] && break; sleep 0.05; done
for i in 2 3; do
"$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/2591$i --http 127.0.0.1:2592$i --data /tmp/prof-run/n$i --expect 3 --join /ip4/127.0.0.1/tcp/25911/p2p/$peer >/tmp/prof-run/n$i.log 2>&1 & pids+=($!)
done
for _ in $(seq 240); do
  ok=1; for i in 1 2 3; do curl -sf --max-time 2 http://127.0.0.1:2592$i/readyz >/dev/null || ok=0; l=$(curl -sf --max-time 2 http://127.0.0.1:2592$i/v1/status | grep -o '"reachable":true' | wc -l || true); ((l>=3)) || ok=0; done
  ((ok)) && break; sleep 0.25; done
peers=(); for i in 1 2 3; do p=$(sed -n 's/^peer id *//p' /tmp/prof-run/n$i.log | head -1); peers+=(--peer /ip4/127.0.0.1/tcp/2591$i/p2p/$p); done
"$BIN" bench ${OP:-put} --clients "$C" --ops "$OPS" --keys 10000 --max-seconds 40 "${peers[@]}" > "$OUT/bench.txt" 2>&1 & b=$!
sleep 8
perf record -F 997 --call-graph dwarf,16384 -p "${pids[0]}" -o "$OUT/perf.data" -- sleep "$PS" 2>"$OUT/perf.err" || true
wait $b || true
for i in 0 1 2; do grep -E "^(ctxt|voluntary|nonvol)" /proc/${pids[$i]}/status >/dev/null 2>&1 || true; done
curl -sf http://127.0.0.1:25921/metrics > "$OUT/metrics-n1.txt" || true
tail -3 "$OUT/bench.txt"
