#!/usr/bin/env bash
# perf/profile.sh - profile ftproxy on the HTTP/1.1 keep-alive case (wrk -c50, 100 B body).
#
# Starts the nginx upstream on CPU 1, ftproxy (`python -X perf`, one worker) on CPU 0, drives it
# with wrk on CPU 1 and records with Linux `perf record -g` (py-spy misattributes frames on 3.13,
# see shared/reference/python-runtime.md §5). Also takes a cProfile of the same run when
# PROFILER=cprofile
# (perf/profile_inproc.py: every worker thread under cProfile). Output: $OUT_DIR/perf.report.txt (self and children tables).
#
#   perf/profile.sh                 # ~20 s;  OUT_DIR=/tmp/ftproxy-prof[-BASE]  SECS=8
#   PERF_PORT_BASE=auto perf/profile.sh   # ports from perf/ports.sh (default 18080/18090/19901)
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-prof; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}; SECS=${SECS:-8}; PROFILER=${PROFILER:-perf}
URL=http://127.0.0.1:$PERF_PROXY_PORT/
mkdir -p "$OUT_DIR/www" "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"
perf_need_free "$PERF_UPSTREAM_PORT" "$PERF_PROXY_PORT" "$PERF_ADMIN_PORT"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream "1"
CFG=$(perf_render "$ROOT/perf/configs/http.yaml")
if [ "$PROFILER" = cprofile ]; then
  setsid taskset -c 0 env FTPROXY_PROFILE_DIR="$OUT_DIR" PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" "$ROOT/perf/profile_inproc.py" \
    -c "$CFG" --concurrency 1 --drain-time-s 1 -l warning --base-id "$(perf_base_id 4711)" >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
else
  setsid taskset -c 0 env PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" -X perf -m proxy.server.main \
    -c "$CFG" --concurrency 1 -l warning --base-id "$(perf_base_id 4711)" >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
fi
PROXY_PG=${PGS[-1]}
for i in $(seq 100); do curl -fs -o /dev/null "$URL" && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c50 -d2s "$URL" >/dev/null    # warm-up
PID=$(pgrep -g "$PROXY_PG" -f python | head -1)
if [ "$PROFILER" = cprofile ]; then
  taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$URL" | tee "$OUT_DIR/wrk.txt"
  kill -TERM "$PID"; for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  for f in "$OUT_DIR"/thread-*.prof; do
    "$ROOT/.venv/bin/python" -c "import pstats,sys; p=pstats.Stats(sys.argv[1]); p.sort_stats('tottime').print_stats(40); p.sort_stats('cumulative').print_stats(40)" "$f"
  done > "$OUT_DIR/cprofile.txt"; echo "cProfile: $OUT_DIR/cprofile.txt"
  exit 0
fi
perf record -F 499 --call-graph dwarf,16384 -p "$PID" -o "$OUT_DIR/perf.data" -- sleep "$SECS" 2>"$OUT_DIR/perf-record.err" &
REC=$!
taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$URL" | tee "$OUT_DIR/wrk.txt"
wait $REC || true
perf report -i "$OUT_DIR/perf.data" --no-children --sort symbol --stdio --percent-limit 0.7 -g none \
  > "$OUT_DIR/perf.self.txt" 2>/dev/null
perf report -i "$OUT_DIR/perf.data" --children --sort symbol --stdio --percent-limit 2 -g none \
  > "$OUT_DIR/perf.children.txt" 2>/dev/null
echo "perf report: $OUT_DIR/perf.self.txt $OUT_DIR/perf.children.txt"
