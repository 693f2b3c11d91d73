#!/usr/bin/env bash
# One put run on a fresh 3-node cluster; prints ops/s, p99 and the nodes' CPU ms per op.
# usage: ab.sh BIN LABEL [clients] [ops] [keys]   (env NODE_ENV="A=1 B=2" for the nodes)
set -euo pipefail
BIN=$1 LABEL=$2 C=${3:-64} OPS=${4:-60000} K=${5:-10000}
R=${ABDIR:-/tmp/ab-run}; rm -rf $R; mkdir -p $R
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
E=(env ${NODE_ENV:-})
"${E[@]}" "$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/25911 --http 127.0.0.1:25921 --data $R/n1 --expect 3 >$R/n1.log 2>&1 & pids+=($!)
for _ in $(seq 100); do peer=$(sed -n 's/^peer id *//p' $R/n1.log | head -1); [[ -n $peer ]] && break; sleep 0.05; done
for i in 2 3; do
"${E[@]}" "$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/2591$i --http 127.0.0.1:2592$i --data $R/n$i --expect 3 --join /ip4/127.0.0.1/tcp/25911/p2p/$peer >$R/n$i.log 2>&1 & pids+=($!)
done
for _ in $(seq 240); do
  ok=1; for i in 1 2 3; do curl -sf --max-time 2 http://127.0.0.1:2592$i/readyz >/dev/null || ok=0; l=$(curl -sf --max-time 2 http://127.0.0.1:2592$i/v1/status | grep -o '"reachable":true' | wc -l || true); ((l>=3)) || ok=0; done
  ((ok)) && break; sleep 0.25; done
peers=(); for i in 1 2 3; do p=$(sed -n 's/^peer id *//p' $R/n$i.log | head -1); if [[ -n ${HTTPB:-} ]]; then peers+=(--endpoint http://127.0.0.1:2592$i); else peers+=(--peer /ip4/127.0.0.1/tcp/2591$i/p2p/$p); fi; done
"$BIN" bench put --clients "$C" --ops 1000 --keys "$K" --max-seconds 40 "${peers[@]}" >/dev/null 2>&1
cpu() { local t=0; for p in "${pids[@]}"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t+$1+$2)); done; echo $t; }
c0=$(cpu)
"$BIN" bench ${OP:-put} --clients "$C" --ops "$OPS" --keys "$K" --no-preload --max-seconds 40 "${peers[@]}" > $R/bench.txt 2>&1
c1=$(cpu)
ops=$(sed -n 's/^total_ops=\([0-9]*\).*/\1/p' $R/bench.txt)
res=$(grep RESULT $R/bench.txt)
grep latency_ms $R/bench.txt; echo "$LABEL $res cpu_ms_per_op=$(echo "scale=4; ($c1-$c0)*10/$ops" | bc)"
