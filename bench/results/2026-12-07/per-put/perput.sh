#!/usr/bin/env bash
# Per-put syscalls, frames, writes and context switches of the three nodes in a put run.
# usage: perput.sh BIN OUTDIR CLIENTS OPS [STRACE=1: also strace -c node 1 for 5 s]
set -euo pipefail
BIN=$1 OUT=$2 C=$3 OPS=$4 K=${KEYS:-10000}
mkdir -p "$OUT"; R=/tmp/perput-run; rm -rf $R; mkdir -p $R
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/25911 --http 127.0.0.1:25921 --data $R/n1 --expect 3 >$R/n1.log 2>&1 & pids+=($!)
for _ in $(seq 100); do peer=$(sed -n 's/^peer id *//p' $R/n1.log | head -1); [[ -n $peer ]] && break; sleep 0.05; done
for i in 2 3; do
"$BIN" start --no-mdns --listen /ip4/127.0.0.1/tcp/2591$i --http 127.0.0.1:2592$i --data $R/n$i --expect 3 --join /ip4/127.0.0.1/tcp/25911/p2p/$peer >$R/n$i.log 2>&1 & pids+=($!)
done
for _ in $(seq 240); do
  ok=1; for i in 1 2 3; do curl -sf --max-time 2 http://127.0.0.1:2592$i/readyz >/dev/null || ok=0; l=$(curl -sf --max-time 2 http://127.0.0.1:2592$i/v1/status | grep -o '"reachable":true' | wc -l || true); ((l>=3)) || ok=0; done
  ((ok)) && break; sleep 0.25; done
peers=(); for i in 1 2 3; do p=$(sed -n 's/^peer id *//p' $R/n$i.log | head -1); peers+=(--peer /ip4/127.0.0.1/tcp/2591$i/p2p/$p); done
"$BIN" bench put --clients "$C" --ops 2000 --keys "$K" --max-seconds 60 "${peers[@]}" >/dev/null 2>&1
metrics() { for i in 1 2 3; do curl -sf http://127.0.0.1:2592$i/metrics; done | grep -E '^swarmkv_(stream_frames_total|stream_writes_total|persist_turns_total|log_syncs_total|applies_total|raft_messages_sent_total|state_flushes_total)' | sed 's/ /\t/' | awk -F'\t' '{s[$1]+=$2} END {for (k in s) print k"\t"s[k]}' | sort; }
ctx() { local t=0; for p in "${pids[@]}"; do for f in /proc/$p/task/*/status; do v=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s+=$2} END {print s}' $f 2>/dev/null || echo 0); t=$((t+v)); done; done; echo $t; }
metrics > $OUT/m0.txt; x0=$(ctx)
ev="syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_pwrite64,syscalls:sys_enter_fdatasync,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield"
perf stat -e "$ev" -p "$(IFS=,; echo "${pids[*]}")" -o $OUT/perfstat.txt &
ps_pid=$!
"$BIN" bench put --clients "$C" --ops "$OPS" --keys "$K" --no-preload --max-seconds 60 "${peers[@]}" > $OUT/bench.txt 2>&1
kill -INT $ps_pid; wait $ps_pid 2>/dev/null || true
metrics > $OUT/m1.txt; x1=$(ctx)
ops=$(sed -n 's/^total_ops=\([0-9]*\).*/\1/p' $OUT/bench.txt)
{
echo "clients=$C ops=$ops $(grep RESULT $OUT/bench.txt)"
echo "context switches per put (3 nodes, all threads): $(echo "scale=2; ($x1-$x0)/$ops" | bc)"
join -t$'\t' $OUT/m0.txt $OUT/m1.txt | awk -F'\t' -v ops=$ops '{printf "%s per put: %.3f\n", $1, ($3-$2)/ops}'
awk -v ops=$ops '/syscalls:sys_enter_/ {gsub(",","",$1); printf "%s per put (3 nodes): %.3f\n", $2, $1/ops}' $OUT/perfstat.txt
} | tee $OUT/summary.txt
if [[ ${STRACE:-0} == 1 ]]; then
  "$BIN" bench put --clients "$C" --ops "$OPS" --keys "$K" --no-preload --max-seconds 60 "${peers[@]}" > $OUT/bench-strace.txt 2>&1 & b=$!
  sleep 3; timeout -s INT 5 strace -c -f -p "${pids[0]}" -o $OUT/strace-c-node1.txt || true
  wait $b || true
fi
