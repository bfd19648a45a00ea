#!/usr/bin/env bash
# perf/run.sh - ftproxy side-by-side benchmark suite, one command:
#
#   perf/run.sh              # full run (~8 min): peers.sh (RUNS=3, 10 s) + perf/bench.py
#   QUICK=1 perf/run.sh      # ~4 min: RUNS=1, DURATION=5s, smaller bulk
#
# 1. ../shared/tools/peers.sh with PROXY_CMD = ftproxy (one worker, perf/configs/http.yaml):
#    HTTP/1.1 keep-alive (wrk -c50) and HTTP bulk vs direct, HAProxy and nginx  -> perf/peers.json
# 2. perf/bench.py: new connection per request, 1 MiB responses, 1,000 connections, TCP bulk
#    (perf/configs/tcp.yaml), concurrency sweep, 10,000 idle connections (RSS), 1 GiB through a
#    slow reader (RSS)  -> perf/results.json and the tables in perf/RESULTS.md.
# 3. perf/instr_count.sh (when valgrind is installed; SKIP_INSTR=1 skips it): machine
#    instructions per keep-alive request for ftproxy, the floor probe and the fused-path probe,
#    which do not move with the VM's speed  -> perf/instr.txt.
# Everything on 127.0.0.1; the server under test on CPU 0, clients and upstream on CPU 1.
# Ports: perf/ports.sh (PERF_PORT_BASE, default 18080: upstream 18080, ftproxy 18090, admin
# 19901; or auto). peers.sh (../shared/tools) has its own fixed ports (18075-18090): with
# another base it runs in a private network namespace (`unshare -n`, its own loopback), where
# they cannot collide with anyone's; without one (not root) set SKIP_PEERS=1.
# Knobs (env): QUICK, RUNS, DURATION, SWEEP="1 2", SWEEP_CPUS, IDLE_CONNS, SLOW_MB, SLOW_RUNS, BULK_ROUNDS, ONLY=a,b,
#   SKIP_PEERS=1, SKIP_INSTR=1, PERF_PORT_BASE, FTPROXY_CMD (template with {config} {concurrency}; default below).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd); cd "$ROOT"
source "$HERE/ports.sh"
PEERS=${PEERS:-$ROOT/../shared/tools/peers.sh}
[ -x "$PEERS" ] || PEERS=/work/shared/tools/peers.sh
if [ "${QUICK:-0}" = 1 ]; then
  export RUNS=${RUNS:-1} DURATION=${DURATION:-5s} BULK_MB=${BULK_MB:-100} BULK_REPS=${BULK_REPS:-3} BULK_ROUNDS=${BULK_ROUNDS:-3}
else
  export RUNS=${RUNS:-3} DURATION=${DURATION:-10s}
fi
# The proxy under test. A separate --base-id keeps its hot-restart socket apart from any other
# ftproxy on the box (e.g. a test run; 4711 moved with PERF_PORT_BASE). proxyctl gets it when it
# has the flag; otherwise run the epoch process proxyctl supervises (same hot path) directly.
# proxyctl's pid file (and control socket beside it) is per user by default, so a second one
# anywhere on the box refuses to start: one per base here.
BASE_ID=$(perf_base_id 4711)
if [ -z "${FTPROXY_CMD:-}" ]; then
  if .venv/bin/proxyctl start --help 2>/dev/null | grep -q -- --base-id; then
    FTPROXY_CMD=".venv/bin/proxyctl start -c {config} --concurrency {concurrency} -l warning --base-id $BASE_ID"
    .venv/bin/proxyctl start --help 2>/dev/null | grep -q -- --pid-file &&
      FTPROXY_CMD+=" --pid-file $PERF_LOCK_DIR/proxyctl-$PERF_PORT_BASE.pid"
  elif .venv/bin/python -c 'import proxy.server.main' 2>/dev/null; then
    FTPROXY_CMD=".venv/bin/python -m proxy.server.main -c {config} --concurrency {concurrency} -l warning --base-id $BASE_ID"
  else
    FTPROXY_CMD='.venv/bin/proxyctl start -c {config} --concurrency {concurrency} -l warning'
  fi
fi
export FTPROXY_CMD
if [ "${SKIP_PEERS:-0}" != 1 ]; then
  # peers.sh's ports are fixed (the upstream 18080, ftproxy on PROXY_PORT 18090): the default
  # config as it is; with another base, a private network namespace of its own.
  NETNS=()
  if [ "$PERF_PORT_BASE" != 18080 ]; then
    unshare -n true 2>/dev/null || { echo "peers.sh uses fixed ports (18075-18090); with" \
      "PERF_PORT_BASE=$PERF_PORT_BASE it runs in a private network namespace (unshare -n), which" \
      "this user cannot make: set SKIP_PEERS=1" >&2; exit 1; }
    NETNS=(unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"')
    echo "[perf] peers.sh in a private network namespace (its fixed ports 18075-18090 on its own loopback)" >&2
  fi
  cmd=${FTPROXY_CMD//\{config\}/perf/configs/http.yaml}; cmd=${cmd//\{concurrency\}/1}
  PROXY_CMD="cd $ROOT && exec $cmd" PROXY_NAME=ftproxy SKIP_H2=1 OUT="$HERE/peers.json" \
    "${NETNS[@]}" "$PEERS" | tee "$HERE/peers.txt"
fi
.venv/bin/python perf/bench.py ${ONLY:+--only "$ONLY"} --command "${QUICK:+QUICK=$QUICK }perf/run.sh"
if [ "${SKIP_INSTR:-0}" != 1 ] && [ -z "${ONLY:-}" ] && command -v valgrind >/dev/null; then
  { echo "# perf/instr_count.sh, $(date -u +%FT%TZ): user-space instructions per keep-alive request"
    for probe in "" floor lane; do
      echo "${probe:-ftproxy}: $(PROBE=$probe perf/instr_count.sh | sed -n 1p)"
    done; } | tee "$HERE/instr.txt"
fi
