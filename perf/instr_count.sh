#!/usr/bin/env bash
# perf/instr_count.sh - machine instructions the worker thread executes per HTTP/1.1 keep-alive
# request, counted by valgrind's callgrind: the interpreter, C libraries (httptools, bytes
# ops, allocation, GC) and Python code together, in user space. Repeatable to about 1 % from
# run to run whatever else the machine does, where timings on this VM move by +-20 %
# (perf stat's hardware counters are not available here).
#
# nginx upstream, ftproxy (perf/configs/http.yaml rendered with perf/ports.sh's ports, one
# worker) under callgrind with instrumentation off; wrk -c20 warms up, then instrumentation is
# switched on for SECS seconds of wrk -c20. The divisor is the proxy's own count of the
# requests it served in that window (the sum of http.<prefix>.downstream_rq_total from its
# admin /stats, read with no load running and nothing in flight, before switching on and after
# switching off; perf/admin_stats.py); wrk's count is printed beside it. A CONFIG without an
# admin, and the probes, fall back to wrk's count.
#   perf/instr_count.sh        # SECS=5 TOP=25 OUT_DIR=/tmp/ftproxy-instr[-BASE]
#   PERF_PORT_BASE=auto perf/instr_count.sh   # free ports when someone else runs perf too
#   PROBE=floor perf/instr_count.sh   # the same count for perf/probe_floor.py (CPython's floor)
#   PROBE=lane perf/instr_count.sh    # ... for perf/probe_lane.py (a fused path's lower bound)
#   CONFIG=perf/configs/http-fault.yaml perf/instr_count.sh   # the same path with a filter added
#   WRK_HEADER="x-api-key: demo-key" CONFIG=perf/configs/http-python-apikey.yaml perf/instr_count.sh
#   H2=1 perf/instr_count.sh          # HTTP/2 (h2c): h2load -n $H2_N (2000) -c 10 -m 10 instead of wrk
#   WRK_C=1 ...   # one connection (a config whose calls outlive their timeout at -c20 under callgrind)
# Under callgrind the proxy runs ~50x slower (a few hundred requests a second).
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-instr; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}; SECS=${SECS:-5}; TOP=${TOP:-25}; WRK_C=${WRK_C:-20}
PY=${PY:-$ROOT/.venv/bin/python}
URL=${URL:-http://127.0.0.1:$PERF_PROXY_PORT/}  # https://... with a TLS CONFIG (perf/tls_configs.py writes ftproxy-$PERF_PROXY_PORT.yaml)
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"; rm -f "$OUT_DIR"/callgrind.out*
perf_need_free "$PERF_UPSTREAM_PORT" "$PERF_PROXY_PORT" "$PERF_ADMIN_PORT"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream ""
cd "$ROOT"
CFG=""; PROBE=${PROBE:-}
if [ -n "$PROBE" ]; then
  [ "$PROBE" = lane ] || PROBE=floor
  SERVER=("$HERE/probe_$PROBE.py"); MATCH=probe_$PROBE
else
  CFG=$(perf_render "${CONFIG:-$ROOT/perf/configs/http.yaml}")
  SERVER=(-m proxy.server.main -c "$CFG" --concurrency 1 --drain-time-s 1
          -l warning --base-id "$(perf_base_id 4715)"); MATCH=proxy.server.main
fi
setsid valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
  --callgrind-out-file="$OUT_DIR/callgrind.out" "$PY" "${SERVER[@]}" \
  >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
for i in $(seq 240); do
  curl -fsk -o /dev/null "$URL" && break
  kill -0 "${PGS[-1]}" 2>/dev/null || { tail -5 "$OUT_DIR/proxy.log" >&2; echo "the server exited: $OUT_DIR/proxy.log" >&2; exit 1; }
  sleep 0.5
done
WRK_ARGS=(); [ -n "${WRK_HEADER:-}" ] && WRK_ARGS=(-H "$WRK_HEADER")  # WRK_HEADER="x-api-key: demo-key"
if [ "${H2:-0}" = 1 ]; then h2load -n 300 -c 10 -m 10 "$URL" >/dev/null    # warm-up, not counted
else wrk -t1 -c"$WRK_C" -d2s "${WRK_ARGS[@]}" "$URL" >/dev/null; fi    # warm-up, not counted
PID=$(pgrep -g "${PGS[-1]}" -f "$MATCH" | head -1)
served() {  # the proxy's downstream_rq_total once nothing is in flight; "" without an admin
  [ -n "$CFG" ] && "$PY" "$HERE/admin_stats.py" "$CFG" 2>>"$OUT_DIR/admin_stats.err" || true
}
RQ0=$(served)
callgrind_control -i on "$PID" >/dev/null 2>&1
if [ "${H2:-0}" = 1 ]; then h2load -n "${H2_N:-2000}" -c 10 -m 10 "$URL" > "$OUT_DIR/wrk.txt"
else wrk -t1 -c"$WRK_C" -d"${SECS}s" "${WRK_ARGS[@]}" "$URL" > "$OUT_DIR/wrk.txt"; fi
[ -n "$RQ0" ] && served >/dev/null   # wait until the last requests and connections are done
callgrind_control -i off "$PID" >/dev/null 2>&1
RQ1=$(served)
callgrind_control -d "$PID" >/dev/null 2>&1
WRK_REQ=$(awk '/requests in/ {print $1} /^requests:/ {print $8}' "$OUT_DIR/wrk.txt")
if [ -n "$RQ0" ] && [ -n "$RQ1" ]; then REQ=$((RQ1 - RQ0)); SRC=proxy
else REQ=$WRK_REQ; SRC=wrk; [ -n "$PROBE" ] && SRC="divided by wrk's count: the probe has no admin"; fi
# The worker is the thread with the most instructions; per-thread files end in -NN.
best=""; bestn=0
for f in "$OUT_DIR"/callgrind.out.[0-9]*-*; do  # dump 1, one file per thread
  n=$(awk '/^totals:/ {print $2; exit}' "$f")
  if [ "${n:-0}" -gt "$bestn" ]; then best=$f; bestn=$n; fi
done
python3 - "$best" "$REQ" "$TOP" "$SRC" "$WRK_REQ" <<'PY'
import re, subprocess, sys
path, requests, top, src, wrk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True).stdout
rows = [(int(m.group(1).replace(",", "")), m.group(2)) for m in
        re.finditer(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", out, re.M)]
total = next(n for n, name in rows if name == "PROGRAM")
how = (f"divided by the proxy's count of requests served while instrumented; wrk counted {wrk}: "
       f"{total / max(wrk, 1):.0f} per request" if src == "proxy" else
       "divided by wrk's count: no admin in the config" if src == "wrk" else src)
print(f"requests {requests}  instructions per request {total / requests:.0f}  ({how}; {path})")
for n, name in [r for r in rows if r[1] != "PROGRAM"][:top]:
    print(f"{n / requests:9.0f}  {name.split('/')[-1]}")
PY
