# shellcheck shell=bash
# bench/lib.sh — shared helpers for scripts/bench, scripts/bench-peers and scripts/bench-broadcast.
#
# Why it exists: both benchmark scripts start throw-away servers (redis-server, Switchyard,
# the Django peers) on free loopback ports, run the load tool with hard time limits, and must
# stop every process they started however they exit. Sourced, never executed.

BENCH_STARTED_PIDS=()

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A free TCP port on 127.0.0.1 (never 6379).
bench_free_port() {
  local port
  while :; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    [ "$port" != 6379 ] && { echo "$port"; return; }
  done
}

# bench_start NAME LOGFILE CMD... — start CMD in the background, remember its PID in BENCH_PID.
bench_start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  BENCH_PID=$!
  BENCH_STARTED_PIDS+=("$BENCH_PID")
  bench_log "started $name (pid $BENCH_PID, log $log)"
}

# Descendants of a PID (children, grandchildren …), deepest last.
bench_descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    echo "$child"
    bench_descendants "$child"
  done
}

# bench_stop PID… — SIGTERM the PIDs and their descendants, SIGKILL what is left after 10 s.
bench_stop() {
  local all=() pid i
  for pid in "$@"; do
    all+=("$pid")
    while read -r i; do [ -n "$i" ] && all+=("$i"); done < <(bench_descendants "$pid")
  done
  [ ${#all[@]} -eq 0 ] && return 0
  kill -TERM "${all[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# Stop everything started through bench_start (EXIT trap).
bench_stop_all() {
  if [ ${#BENCH_STARTED_PIDS[@]} -gt 0 ]; then
    bench_stop "${BENCH_STARTED_PIDS[@]}"
    BENCH_STARTED_PIDS=()
  fi
}

# Forget PIDs already stopped by hand (so the EXIT trap does not signal reused PIDs).
bench_forget() {
  local keep=() pid gone
  for pid in "${BENCH_STARTED_PIDS[@]}"; do
    gone=0
    for g in "$@"; do [ "$pid" = "$g" ] && gone=1; done
    [ $gone = 0 ] && keep+=("$pid")
  done
  BENCH_STARTED_PIDS=("${keep[@]}")
}

# bench_start_redis DIR — start a private redis-server; sets REDIS_PORT, REDIS_PID.
bench_start_redis() {
  local dir=$1
  command -v redis-server >/dev/null || { bench_log "redis-server not found (apt-get install -y redis-server)"; return 1; }
  REDIS_PORT=$(bench_free_port)
  bench_start redis-server "$dir/redis-$REDIS_PORT.log" \
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$dir" --maxclients 10000
  REDIS_PID=$BENCH_PID
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  bench_log "redis-server on port $REDIS_PORT did not answer PING"
  return 1
}

# bench_wait_http URL PID SECONDS — wait until URL answers 200 while PID is alive.
bench_wait_http() {
  local url=$1 pid=$2 secs=$3 i
  for i in $(seq 1 $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -fsS -m 1 "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# bench_build_loadgen ROOT — sets BENCH (path of switchyard-bench), building it unless
# BENCH_BIN names an existing binary.
bench_build_loadgen() {
  local root=$1
  if [ -n "${BENCH_BIN:-}" ]; then
    BENCH=$BENCH_BIN
  else
    bench_log "building switchyard-bench (release) …"
    (cd "$root" && cargo build --release -q -p switchyard-loadgen) || return 1
    BENCH=${CARGO_TARGET_DIR:-$root/target}/release/switchyard-bench
  fi
  [ -x "$BENCH" ] || { bench_log "load tool $BENCH is missing"; return 1; }
}

# bench_run SECONDS OUT_JSONL LABEL SCENARIO ARGS… — run switchyard-bench with a hard time
# limit; append its JSON line (or a failure record) to OUT_JSONL. Human output goes to stderr.
bench_run() {
  local limit=$1 out=$2 label=$3 scenario=$4 line rc
  shift 4
  bench_log "$label: switchyard-bench $scenario $*"
  set +e
  line=$(timeout -k 10 "$limit" "$BENCH" "$scenario" --json --label "$label" "$@")
  rc=$?
  set -e
  if [ $rc -eq 0 ] && [ -n "$line" ]; then
    printf '%s\n' "$line" >>"$out"
  else
    printf '{"label":"%s","scenario":"%s","args":"%s","failed":"exit status %s"}\n' \
      "$label" "$scenario" "$*" "$rc" >>"$out"
    bench_log "$label: $scenario failed (exit $rc)"
  fi
  return 0
}

# bench_smoke URL — one connection, one second: does the chat counter answer at all?
bench_smoke() {
  local out
  out=$(timeout -k 5 30 "$BENCH" rtt --url "$1" --connections 1 --duration 1 --warmup 0 \
    --drain-timeout 2 --json 2>/dev/null) || return 1
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["msgs"]>0 and r["order_violations"]==0 else 1)' "$out"
}

# bench_setup_venv ROOT — create or refresh ROOT/.venv-peers from bench/peers/requirements.txt
# (Django, Channels, channels_redis, Daphne, uvicorn, matplotlib from PyPI), only when the
# requirements changed since the last install.
bench_setup_venv() {
  local root=$1 venv=$1/.venv-peers want have=""
  want=$(sha256sum "$root/bench/peers/requirements.txt" | cut -d' ' -f1)
  [ -f "$venv/.requirements.sha256" ] && have=$(cat "$venv/.requirements.sha256")
  if [ -x "$venv/bin/python" ] && [ "$want" = "$have" ]; then
    return 0
  fi
  bench_log "creating $venv (pip install -r bench/peers/requirements.txt) …"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # Keep the venv out of git without touching the repository's .gitignore.
  echo '*' >"$venv/.gitignore"
  timeout 900 "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/bench/peers/requirements.txt"
  echo "$want" >"$venv/.requirements.sha256"
}
