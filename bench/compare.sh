#!/usr/bin/env bash
# swarmkv vs etcd on this machine, the workload of WORKLOAD.md, in one run:
#
#   bench/compare.sh [--rounds N] [--cases "put:64 get-linearizable:64:50000"] [--quick]
#                    [--out DIR] [--transport peer|http] [--no-build] [--no-quiet-wait]
#                    [--swarmkv-args "--share-connections"] [--ab-one-node | --ab-bin PATH]
#   bench/compare.sh --table DIR     (only print the table of an earlier run's output dir)
#
# --ab-one-node: an A/B of the swarmkv client's routing instead of the comparison with etcd:
# system `swarmkv-one-node` (every request through the client's own node, `--one-node`) takes
# etcd's place as the baseline, `swarmkv` (requests to each partition's leader) is measured
# against it, alternating as above; etcd is not needed.
# --ab-bin PATH: an A/B of two builds: system `swarmkv-base` (the binary at PATH, its own
# `bench` verb, no --swarmkv-args) takes etcd's place; etcd is not needed.
#
# From a fresh clone it builds `swarmkv` (release, feature `etcd`: the bench drives etcd
# itself, so both systems get the identical client), installs Debian's etcd-server,
# etcd-client and protobuf-compiler if missing (apt-get, as root), and then, round by round
# and case by case, alternating which system goes first:
#   - starts a FRESH 3-member etcd cluster / 3-node swarmkv cluster (separate processes on
#     127.0.0.1, fresh data directories on the local disk), both fsyncing their logs;
#   - runs `swarmkv bench <op> --clients C --ops N --max-seconds 30` against it (which
#     preloads the key space untimed first);
#   - measures the CPU used by other processes during the bench ("foreign CPU") and
#     re-measures a run that exceeded FOREIGN_MAX % (the discarded file is kept);
#   - measures the CPU (user + system) of the 3 cluster processes, not the bench client,
#     during the timed phase only (not the preload) and divides it by the phase's completed
#     operations (`total_ops`): `cpu_ms_per_op=` on the raw file's cpu line;
#   - stops exactly the processes it started (by PID; also on exit or Ctrl-C).
# Over --transport peer the swarmkv clients send each request to its partition's leader
# (`routing=leader` in the raw files and the table); --swarmkv-args --one-node measures the old
# way, every request through the client's own node.
# Raw files: OUT/<system>/r<round>-<op>-c<C>.txt (the baseline's summarize.sh reads each
# system's directory); the table (medians over rounds of ops/s, p50, p99 and cluster CPU ms
# per op, ratios swarmkv/etcd) is printed at the end and written to OUT/table.md. With
# --table, an older run's files without `cpu_ms_per_op` show "-" in the CPU columns.
#
# Env knobs (as the etcd baseline's run-baseline.sh): MAX_SECONDS (30), FOREIGN_MAX (10),
# MAX_RETRIES (1), QUIET_PCT (15), QUIET_MAX_WAIT (300), SWARMKV_BIN (skip the build and
# use this binary), COMPARE_TMP (where data dirs go, default /tmp: must be local disk).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HOST=127.0.0.1
ETCD_CLIENT_PORTS=(24791 24792 24793)
ETCD_PEER_PORTS=(24801 24802 24803)
SKV_P2P_PORTS=(24811 24812 24813)
SKV_HTTP_PORTS=(24821 24822 24823)
TMPROOT=${COMPARE_TMP:-/tmp}
MAXS=${MAX_SECONDS:-30}
FOREIGN_MAX=${FOREIGN_MAX:-10}
MAX_RETRIES=${MAX_RETRIES:-1}

# The cases of WORKLOAD.md: op:clients:ops.
FULL_CASES=(put:1:15000 put:16:40000 put:64:50000 put:256:60000
            get-linearizable:64:50000 get-serializable:64:60000)
# --quick: a smoke of the whole pipeline in about two minutes (NOT comparable numbers).
QUICK_CASES=(put:1:1000 put:64:5000 get-linearizable:64:5000 get-serializable:64:5000)

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 2; }  # the comment above

ROUNDS="" CASES_ARG="" QUICK=0 OUT="" TRANSPORT=peer BUILD=1 QUIET_WAIT=1 SKV_ARGS="" TABLE_ONLY=""
BASE=etcd  # the baseline system; the subject is always swarmkv
BASE_BIN=""  # swarmkv-base's binary (--ab-bin)
while (($#)); do
  case $1 in
    --rounds) ROUNDS=${2:?}; shift ;;
    --cases) CASES_ARG=${2:?}; shift ;;
    --quick) QUICK=1 ;;
    --out) OUT=${2:?}; shift ;;
    --transport) TRANSPORT=${2:?}; shift ;;
    --no-build) BUILD=0 ;;
    --no-quiet-wait) QUIET_WAIT=0 ;;
    --swarmkv-args) SKV_ARGS=${2?}; shift ;;  # extra `swarmkv bench` flags for swarmkv runs
    --table) TABLE_ONLY=${2:?}; shift ;;
    --ab-one-node) BASE=swarmkv-one-node ;;
    --ab-bin) BASE=swarmkv-base; BASE_BIN=${2:?}; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument $1" >&2; usage ;;
  esac
  shift
done
if [[ -z $ROUNDS ]]; then if ((QUICK)); then ROUNDS=1; else ROUNDS=2; fi; fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive number" >&2; exit 2; }
[[ $TRANSPORT == peer || $TRANSPORT == http ]] || { echo "--transport peer|http" >&2; exit 2; }

KEYS=100000
if ((QUICK)); then
  CASES=("${QUICK_CASES[@]}"); KEYS=10000; MAXS=10; QUIET_WAIT=0; MAX_RETRIES=0
  [[ -z $CASES_ARG ]] || read -r -a CASES <<<"$CASES_ARG"
elif [[ -n $CASES_ARG ]]; then
  CASES=()
  for c in $CASES_ARG; do
    IFS=: read -r op cl ops <<<"$c"
    if [[ -z ${ops:-} ]]; then  # op:clients -> the workload's ops count for that case
      for f in "${FULL_CASES[@]}"; do [[ $f == "$op:$cl:"* ]] && ops=${f##*:}; done
      [[ -n ${ops:-} ]] || { echo "case $c: give op:clients:ops (not a workload case)" >&2; exit 2; }
    fi
    CASES+=("$op:$cl:$ops")
  done
else
  CASES=("${FULL_CASES[@]}")
fi
for c in "${CASES[@]}"; do
  IFS=: read -r op cl ops <<<"$c"
  [[ $op =~ ^(put|get-linearizable|get-serializable|txn)$ && $cl =~ ^[0-9]+$ && $ops =~ ^[0-9]+$ ]] ||
    { echo "bad case '$c' (op:clients:ops)" >&2; exit 2; }
done

if [[ -n $TABLE_ONLY ]]; then
  # Re-print the table of an earlier run: its cases, rounds and settings are in env.txt.
  OUT=$TABLE_ONLY
  [[ -r $OUT/env.txt ]] || { echo "$OUT/env.txt not found" >&2; exit 1; }
  read -r -a CASES <<<"$(sed -n 's/.* cases=//p' "$OUT/env.txt")"
  ROUNDS=$(sed -n 's/^rounds=\([0-9]*\).*/\1/p' "$OUT/env.txt")
  MAXS=$(sed -n 's/.* max_seconds=\([0-9]*\).*/\1/p' "$OUT/env.txt")
  SKV_ARGS=$(sed -n 's/.*(swarmkv bench args: \(.*\))$/\1/p' "$OUT/env.txt")
  TRANSPORT=$(sed -n 's/.*bench transport: \([a-z]*\).*/\1/p' "$OUT/env.txt")
  BASE=$(sed -n 's/^baseline: \([a-z-]*\).*/\1/p' "$OUT/env.txt"); BASE=${BASE:-etcd}
  grep -q '^rounds=.* keys=10000 ' "$OUT/env.txt" && QUICK=1
fi
OUT=${OUT:-$TMPROOT/swarmkv-compare.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/$BASE" "$OUT/swarmkv"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

run_all() {
# ---------------------------------------------------------------- prerequisites and build
need_pkgs=()
if [[ $BASE == etcd ]]; then
  command -v etcd >/dev/null || need_pkgs+=(etcd-server)
  command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
fi
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
if [[ -z ${SWARMKV_BIN:-} ]] && ((BUILD)); then command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler); fi
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "missing ${need_pkgs[*]}: run as root, or: apt-get install -y ${need_pkgs[*]}" >&2; exit 1
  fi
  log "installing ${need_pkgs[*]} (apt-get)"
  # No service may start from the package (etcd.service would take port 2379).
  policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  if ((policy_added)); then rm -f /usr/sbin/policy-rc.d; fi
fi

if [[ -n ${SWARMKV_BIN:-} ]]; then
  BIN=$SWARMKV_BIN
else
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/swarmkv
  if ((BUILD)); then
    log "building swarmkv (release, --features etcd)"
    (cd "$REPO" && cargo build --release --features etcd --bin swarmkv)
  fi
fi
[[ -x $BIN ]] || { echo "no swarmkv binary at $BIN" >&2; exit 1; }
[[ -z $BASE_BIN || -x $BASE_BIN ]] || { echo "no swarmkv binary at $BASE_BIN" >&2; exit 1; }
"$BIN" bench --help | grep -q -- '--etcd' || { echo "$BIN lacks the bench verb" >&2; exit 1; }

# ---------------------------------------------------------------- process bookkeeping
# Every process this script starts is recorded here (pid and its data dir); nothing else is
# ever signalled.
RUNNING_PIDS=()
RUN_BASE=""

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# true if $1 is alive and its command line names our data dir $2
# (a process may exit between the test and the read: the redirect's error is silenced too)
is_ours() { [[ -r /proc/$1/cmdline ]] && { tr '\0' ' ' </proc/"$1"/cmdline; } 2>/dev/null | grep -qF -- "$2/"; }

stop_cluster() {
  local pid live=() still
  for pid in "${RUNNING_PIDS[@]}"; do
    if is_ours "$pid" "$RUN_BASE"; then kill -TERM "$pid" 2>/dev/null || true; live+=("$pid"); fi
  done
  for _ in $(seq 1 100); do
    still=0
    for pid in "${live[@]}"; do is_ours "$pid" "$RUN_BASE" && still=1; done
    ((still)) || break
    sleep 0.1
  done
  for pid in "${live[@]}"; do
    if is_ours "$pid" "$RUN_BASE"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  RUNNING_PIDS=()
  if [[ -n $RUN_BASE && $RUN_BASE == "$TMPROOT"/swarmkv-compare-run.* ]]; then
    cp "$RUN_BASE"/*.log "$RUN_LOGDIR"/ 2>/dev/null || true
    rm -rf -- "$RUN_BASE"
  fi
  RUN_BASE=""
}
trap 'stop_cluster' EXIT
trap 'exit 130' INT TERM

# Starts "$@" detached with its output in $1.log; records its pid (the process itself: the
# wrapper writes its own pid, then execs).
spawn() { # name cmd...
  local name=$1; shift
  # shellcheck disable=SC2016  # $$ and $@ are the inner sh's
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$RUN_BASE/$name.pid" "$@" \
    >"$RUN_BASE/$name.log" 2>&1 </dev/null &
  local n=0
  while [[ ! -s $RUN_BASE/$name.pid ]]; do
    sleep 0.05; n=$((n + 1)); ((n < 200)) || { echo "$name did not start" >&2; return 1; }
  done
  RUNNING_PIDS+=("$(cat "$RUN_BASE/$name.pid")")
}

check_ports() {
  local p
  for p in "$@"; do
    if port_in_use "$p"; then echo "port $p is in use on $HOST; is another compare.sh running?" >&2; return 1; fi
  done
}

new_base() { RUN_BASE=$(mktemp -d "$TMPROOT/swarmkv-compare-run.XXXXXX"); }

# The start functions run as `if ! start_x`, where `set -e` does not apply: every step that
# can fail says `|| return 1`.
start_etcd() {
  check_ports "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" || return 1
  new_base || return 1
  local i initial="" eps=""
  for i in 0 1 2; do initial+="${initial:+,}m$((i + 1))=http://$HOST:${ETCD_PEER_PORTS[$i]}"; done
  # etcd reads ETCD_* variables as flags: clear them for the members.
  local clear=()
  for v in $(compgen -e | grep '^ETCD_' || true); do clear+=(-u "$v"); done
  for i in 0 1 2; do
    local c="http://$HOST:${ETCD_CLIENT_PORTS[$i]}" p="http://$HOST:${ETCD_PEER_PORTS[$i]}"
    eps+="${eps:+,}$c"
    # etcd 3.4 defaults otherwise: WAL fsync on every commit, heartbeat 100 ms, election 1 s.
    spawn "etcd-m$((i + 1))" env "${clear[@]}" etcd --name "m$((i + 1))" \
      --data-dir "$RUN_BASE/m$((i + 1)).etcd" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$initial" --initial-cluster-token "$(basename "$RUN_BASE")" \
      --initial-cluster-state new --logger zap --log-outputs stderr || return 1
  done
  for _ in $(seq 1 120); do
    if etcdctl --endpoints="$eps" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  echo "etcd cluster not healthy within 30 s; logs in $RUN_BASE" >&2
  return 1
}

start_swarmkv() {
  check_ports "${SKV_P2P_PORTS[@]}" "${SKV_HTTP_PORTS[@]}" || return 1
  new_base || return 1
  local i join=() peer clear=(-u RUST_LOG)
  # Only the flags below configure the nodes: no SWARMKV_* from the caller's environment.
  for v in $(compgen -e | grep '^SWARMKV_' || true); do clear+=(-u "$v"); done
  for i in 0 1 2; do
    local dir="$RUN_BASE/n$((i + 1))"
    mkdir -p "$dir" || return 1
    # Defaults otherwise (64 partitions, 3 replicas, tokio workers for half the CPUs: one
    # here, see `swarmkv start --help` on --threads; etcd keeps its GOMAXPROCS default).
    spawn "swarmkv-n$((i + 1))" env "${clear[@]}" "${NODE_BIN:-$BIN}" start --no-mdns \
      --listen "/ip4/$HOST/tcp/${SKV_P2P_PORTS[$i]}" --http "$HOST:${SKV_HTTP_PORTS[$i]}" \
      --data "$dir/data" --expect 3 "${join[@]}" || return 1
    if ((i == 0)); then
      # The others join the first through its address and identity, printed at start.
      for _ in $(seq 1 200); do
        peer=$(sed -n 's/^peer id *//p' "$RUN_BASE/swarmkv-n1.log" | head -1)
        [[ -n $peer ]] && break
        sleep 0.05
      done
      [[ -n $peer ]] || { echo "swarmkv node 1 printed no peer id" >&2; return 1; }
      join=(--join "/ip4/$HOST/tcp/${SKV_P2P_PORTS[0]}/p2p/$peer")
    fi
  done
  # Ready: every gateway says ready, and each sees three live reachable nodes.
  local ok
  for _ in $(seq 1 240); do
    ok=1
    for i in 0 1 2; do
      local url="http://$HOST:${SKV_HTTP_PORTS[$i]}"
      curl -sf --max-time 2 "$url/readyz" >/dev/null || { ok=0; break; }
      local live
      live=$(curl -sf --max-time 2 "$url/v1/status" | grep -o '"reachable":true' | wc -l || true)
      ((live >= 3)) || { ok=0; break; }
    done
    ((ok)) && return 0
    sleep 0.25
  done
  echo "swarmkv cluster not ready within 60 s; logs in $RUN_BASE" >&2
  return 1
}

bench_targets() { # system -> the bench's target flags
  local i
  if [[ $1 == etcd ]]; then
    for i in 0 1 2; do printf -- '--etcd\nhttp://%s:%s\n' "$HOST" "${ETCD_CLIENT_PORTS[$i]}"; done
  elif [[ $TRANSPORT == peer ]]; then
    local peer
    for i in 0 1 2; do
      peer=$(sed -n 's/^peer id *//p' "$RUN_BASE/swarmkv-n$((i + 1)).log" | head -1)
      printf -- '--peer\n/ip4/%s/tcp/%s/p2p/%s\n' "$HOST" "${SKV_P2P_PORTS[$i]}" "$peer"
    done
  else
    for i in 0 1 2; do printf -- '--endpoint\nhttp://%s:%s\n' "$HOST" "${SKV_HTTP_PORTS[$i]}"; done
  fi
}

# ---------------------------------------------------------------- CPU accounting
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $9}' /proc/stat; }
cluster_ticks() {
  local p t=0
  for p in "${RUNNING_PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
# Context switches (voluntary + nonvoluntary) of every thread of the cluster processes so far
# (a thread that has exited takes its count with it).
cluster_ctxsw() {
  local p t=0
  for p in "${RUNNING_PIDS[@]}"; do
    t=$((t + $(cat /proc/"$p"/task/*/status 2>/dev/null |
      awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {s += $2} END {print s + 0}')))
  done
  echo "$t"
}

# Copies the bench's output (stdin) to stdout and samples cluster_ticks and cluster_ctxsw at
# the start of the timed phase (the preload's summary line, printed right before the warm-up
# and the barrier; without a preload, $1 and $2: both before the bench started) and at its end
# (the report's first line, printed once the last client has finished) into OUT/.cticks:
# "ticks_start ticks_end ctxsw_start ctxsw_end".
mark_timed() {
  local line t0=$1 t1="" c0=$2 c1=""
  while IFS= read -r line || [[ -n $line ]]; do
    case $line in
      "preloaded keys="*) t0=$(cluster_ticks); c0=$(cluster_ctxsw) ;;
      "op="*" system="*) [[ -n $t1 ]] || { t1=$(cluster_ticks); c1=$(cluster_ctxsw); } ;;
    esac
    printf '%s\n' "$line"
  done
  echo "$t0 $t1 $c0 $c1" >"$OUT/.cticks"
}

# Waits (at most QUIET_MAX_WAIT s) until other processes use less than QUIET_PCT % of the
# CPUs over 2 s; prints that share.
wait_quiet() {
  local waited=0 b0 b1 pct
  while :; do
    read -r b0 _ < <(cpu_ticks); sleep 2; read -r b1 _ < <(cpu_ticks)
    pct=$(((b1 - b0) * 100 / (2 * HZ * NCPU)))
    ((QUIET_WAIT)) || break
    ((pct < ${QUIET_PCT:-15})) && break
    if ((waited >= ${QUIET_MAX_WAIT:-300})); then
      log "machine still busy (${pct}% CPU from others) after ${waited}s; running anyway"; break
    fi
    ((waited % 30 == 0)) && log "machine busy (${pct}% CPU from other processes); waiting"
    waited=$((waited + 2))
  done
  echo "$pct"
}

# ---------------------------------------------------------------- one measured run
run_case() { # system round op clients ops
  local sys=$1 r=$2 op=$3 clients=$4 ops=$5 attempt f idle rc cpu foreign
  for attempt in $(seq 1 $((1 + MAX_RETRIES))); do
    f="$OUT/$sys/r$r-$op-c$clients.txt"
    RUN_LOGDIR="$OUT/$sys/logs/r$r-$op-c$clients"; mkdir -p "$RUN_LOGDIR"
    idle=$(wait_quiet)
    log "round $r: $sys $op clients=$clients ops=$ops attempt=$attempt (foreign cpu before: ${idle}%)"
    : >"$f"
    local bin=$BIN starter=start_swarmkv
    [[ $sys == swarmkv-base ]] && bin=$BASE_BIN
    [[ $sys == etcd ]] && starter=start_etcd
    if ! NODE_BIN=$bin "$starter" >>"$f" 2>&1; then
      stop_cluster; log "  $sys cluster did not start; see $f"; echo "RESULT op=$op clients=$clients FAILED" >>"$f"; return 0
    fi
    local targets=() extra=()
    mapfile -t targets < <(bench_targets "$sys")
    if [[ $sys == swarmkv* && $sys != swarmkv-base && -n $SKV_ARGS ]]; then read -r -a extra <<<"$SKV_ARGS"; fi
    if [[ $sys == swarmkv-one-node ]]; then extra+=(--one-node); fi
    rc=0
    read -r busy0 steal0 < <(cpu_ticks); local ct0 cs0; ct0=$(cluster_ticks); cs0=$(cluster_ctxsw); local w0; w0=$(date +%s.%N)
    : >"$OUT/.cticks"
    # (pipefail: rc is the bench's exit status; mark_timed itself does not fail)
    /usr/bin/env time -f "%U %S %e" -o "$OUT/.btime" \
      "$bin" bench "$op" --clients "$clients" --ops "$ops" --keys "$KEYS" \
      --max-seconds "$MAXS" "${targets[@]}" "${extra[@]}" 2>&1 | mark_timed "$ct0" "$cs0" >>"$f" || rc=$?
    read -r busy1 steal1 < <(cpu_ticks); local ct1; ct1=$(cluster_ticks); local w1; w1=$(date +%s.%N)
    # The cluster's ticks in the timed phase, and the phase's completed operations.
    local tt0="" tt1="" tc0="" tc1="" nops
    read -r tt0 tt1 tc0 tc1 <"$OUT/.cticks" || true
    nops=$(sed -n 's/^total_ops=\([0-9]*\) .*/\1/p' "$f" | tail -n 1)
    # The bench's own CPU covers its whole life (connect + preload + timed run), as does the
    # window: foreign = the machine's busy time not used by our cluster or the bench.
    # cpu_ms_per_op covers the timed phase only: "-" if it did not report.
    cpu=$(awk -v b="$((busy1 - busy0))" -v st="$((steal1 - steal0))" -v e="$((ct1 - ct0))" \
          -v hz="$HZ" -v n="$NCPU" -v w0="$w0" -v w1="$w1" -v bt="$(tail -n 1 "$OUT/.btime")" \
          -v te="${tt1:+$((tt1 - tt0))}" -v ce="${tc1:+$((tc1 - tc0))}" -v nops="$nops" '
      BEGIN { split(bt, x, " "); bench = x[1] + x[2]; cap = (w1 - w0) * n
              f = 100*(b/hz - e/hz - bench)/cap; if (f < 0) f = 0
              per = (te != "" && nops + 0 > 0) ? sprintf("%.4f", te/hz*1000/nops) : "-"
              cs = (ce != "" && nops + 0 > 0) ? sprintf("%.2f", ce/nops) : "-"
              printf "cpu_total=%.0f%% cluster=%.0f%% bench=%.0f%% foreign=%.0f%% steal=%.0f%% cpu_ms_per_op=%s ctxsw_per_op=%s",
                100*b/hz/cap, 100*e/hz/cap, 100*bench/cap, f, 100*st/hz/cap, per, cs }')
    echo "$cpu" >>"$f"
    echo "bench_exit=$rc" >>"$f"
    stop_cluster
    foreign=$(grep -o 'foreign=[0-9]*' <<<"$cpu" | cut -d= -f2)
    local res; res=$(grep '^RESULT' "$f" || echo "RESULT op=$op clients=$clients FAILED")
    if ((foreign > FOREIGN_MAX && attempt <= MAX_RETRIES)); then
      mv "$f" "${f%.txt}.discarded-a$attempt.txt"
      log "  DISCARDED (foreign ${foreign}% > ${FOREIGN_MAX}%): $res"
      continue
    fi
    log "  $res rc=$rc $cpu"
    grep -E '^(NOTE|first_error)' "$f" | sed 's/^/    /' >&2 || true
    return 0
  done
}

{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm); cpus=$NCPU; $(lscpu | sed -n 's/^Model name: *//p')"
  if [[ $BASE == etcd ]]; then
    echo "etcd: $(etcd --version | head -1); $(etcd --version | grep 'Go Version' || true)"
  fi
  echo "baseline: $BASE${BASE_BIN:+ ($("$BASE_BIN" --version) at $BASE_BIN)}"
  echo "swarmkv: $("$BIN" --version) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')); bench transport: $TRANSPORT ${SKV_ARGS:+(swarmkv bench args: $SKV_ARGS)}"
  echo "rounds=$ROUNDS max_seconds=$MAXS keys=$KEYS foreign_max=$FOREIGN_MAX% cases=${CASES[*]}"
  echo "data dirs on $TMPROOT ($(stat -f -c %T "$TMPROOT"))"
} | tee "$OUT/env.txt" >&2

for r in $(seq 1 "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    IFS=: read -r op clients ops <<<"$c"
    # Alternate which system goes first, round by round.
    if ((r % 2)); then order=("$BASE" swarmkv); else order=(swarmkv "$BASE"); fi
    for sys in "${order[@]}"; do run_case "$sys" "$r" "$op" "$clients" "$ops"; done
  done
done
rm -f "$OUT/.btime" "$OUT/.cticks"
}

if [[ -z $TABLE_ONLY ]]; then run_all; fi

# ---------------------------------------------------------------- the table
# Median over rounds of each metric, per system and case.
field() { # file key -> value of key= on the RESULT / latency / cpu lines
  awk -v k="$2" '/^(RESULT|latency_ms|total_ops|cpu_total)/ {
    for (i = 1; i <= NF; i++) { n = index($i, "="); if (n && substr($i, 1, n - 1) == k) v = substr($i, n + 1) } }
    END { gsub(/%/, "", v); print v }' "$1"
}
median() { # $1 = printf format
  sort -g | awk -v fmt="$1" '{a[NR] = $1} END { if (NR == 0) { print ""; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf fmt "\n", m }'
}
stat_of() { # system op clients key -> median over the rounds' successful runs, or nothing
  local f fmt=%.3f
  [[ $4 == ops/s ]] && fmt=%.1f
  for f in "$OUT/$1"/r*-"$2"-c"$3".txt; do
    [[ -e $f ]] || continue
    grep -q '^RESULT .*ops/s=' "$f" || continue
    field "$f" "$4"
  done | { grep -E '^[0-9.]+$' || true; } | median "$fmt"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
maxof() { sort -g | tail -n 1; }

{
  B=$BASE  # the baseline's name in the table
  echo "swarmkv vs $B, $(date -u '+%Y-%m-%d %H:%M UTC'), $ROUNDS round(s), medians; ratios are swarmkv/$B"
  echo "(ops/s: higher is better for swarmkv above 1x; p99 and CPU/op: lower is better for swarmkv below 1x)."
  echo "CPU ms/op: user + system CPU of the 3 cluster processes (not the bench client) in the timed"
  echo "phase (not the preload), per completed operation; ctxsw/op: their threads' voluntary +"
  echo "nonvoluntary context switches in the same phase, per operation; \"-\" where the raw files predate them."
  if [[ $B == etcd ]]; then
    echo "Both systems fsync their logs before acknowledging a write (etcd its WAL, swarmkv its own Raft"
    echo "log); each is 3 processes on 127.0.0.1, started fresh and preloaded for every run."
  elif [[ $B == swarmkv-base ]]; then
    echo "Two builds of swarmkv: swarmkv-base is the binary given to --ab-bin (driven by its own bench"
    echo "verb), swarmkv the one under test; each run on a fresh 3-process cluster on 127.0.0.1, preloaded."
  else
    echo "One system, two ways of routing the client's requests: swarmkv-one-node sends every request"
    echo "through the client's own node (--one-node), swarmkv to each partition's leader; each run on a"
    echo "fresh 3-process cluster on 127.0.0.1, preloaded."
  fi
  # How the swarmkv clients routed requests, as their reports say (`routing=` on the first line;
  # older binaries and the HTTP transport print none).
  routing=$(grep -ho ' routing=[a-z-]*' "$OUT"/swarmkv/r*.txt 2>/dev/null | cut -d= -f2 | sort -u | paste -sd/ || true)
  echo -n "swarmkv bench over ${TRANSPORT}${SKV_ARGS:+ with $SKV_ARGS}${routing:+ (routing: $routing)}"
  if [[ $B == etcd ]]; then echo "; etcd bench: one gRPC channel per client."; else echo "."; fi
  echo
  echo "| case | $B ops/s | swarmkv ops/s | ops/s ratio | $B p50 ms | swarmkv p50 ms | $B p99 ms | swarmkv p99 ms | p99 ratio | $B CPU ms/op | swarmkv CPU ms/op | CPU/op ratio | $B ctxsw/op | swarmkv ctxsw/op | max foreign CPU |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    IFS=: read -r op clients _ <<<"$c"
    e_tp=$(stat_of "$B" "$op" "$clients" ops/s); s_tp=$(stat_of swarmkv "$op" "$clients" ops/s)
    e_50=$(stat_of "$B" "$op" "$clients" p50_ms); s_50=$(stat_of swarmkv "$op" "$clients" p50_ms)
    e_99=$(stat_of "$B" "$op" "$clients" p99_ms); s_99=$(stat_of swarmkv "$op" "$clients" p99_ms)
    e_cpu=$(stat_of "$B" "$op" "$clients" cpu_ms_per_op); s_cpu=$(stat_of swarmkv "$op" "$clients" cpu_ms_per_op)
    e_cs=$(stat_of "$B" "$op" "$clients" ctxsw_per_op); s_cs=$(stat_of swarmkv "$op" "$clients" ctxsw_per_op)
    fmax=$(for f in "$OUT"/*/r*-"$op"-c"$clients".txt; do [[ -e $f ]] && field "$f" foreign; done | grep -E '^[0-9]+$' | maxof || true)
    echo "| $op c$clients | ${e_tp:--} | ${s_tp:--} | $(ratio "$s_tp" "$e_tp") | ${e_50:--} | ${s_50:--} | ${e_99:--} | ${s_99:--} | $(ratio "$s_99" "$e_99") | ${e_cpu:--} | ${s_cpu:--} | $(ratio "$s_cpu" "$e_cpu") | ${e_cs:--} | ${s_cs:--} | ${fmax:--}% |"
  done
  if ls "$OUT"/*/*discarded* >/dev/null 2>&1; then
    echo
    echo "Discarded runs (foreign CPU > $FOREIGN_MAX %, re-measured): $(printf '%s\n' "$OUT"/*/*discarded* | sed "s|$OUT/||" | paste -sd' ')"
  fi
  if grep -l '^NOTE: stopped early' "$OUT"/*/r*.txt >/dev/null 2>&1; then
    echo
    echo "Stopped early by the ${MAXS} s bound: $(grep -l '^NOTE: stopped early' "$OUT"/*/r*.txt | sed "s|$OUT/||" | paste -sd' ')"
  fi
  if grep -L '^RESULT .*ops/s=' "$OUT"/*/r*.txt 2>/dev/null | grep -v discarded | grep -q .; then
    echo
    echo "FAILED runs (no RESULT): $(grep -L '^RESULT .*ops/s=' "$OUT"/*/r*.txt | grep -v discarded | sed "s|$OUT/||" | paste -sd' ')"
  fi
  if grep -l '^bench_exit=[1-9]' "$OUT"/*/r*.txt >/dev/null 2>&1; then
    echo
    echo "Runs whose bench exited non-zero (failed requests or setup): $(grep -l '^bench_exit=[1-9]' "$OUT"/*/r*.txt | sed "s|$OUT/||" | paste -sd' ')"
  fi
  ((QUICK)) && { echo; echo "--quick: a smoke run (small key space and op counts); not a measurement."; }
  echo
  echo "Raw files: $OUT/{$BASE,swarmkv}/r<round>-<op>-c<C>.txt"
} | tee "$OUT/table.md"
