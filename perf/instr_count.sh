#!/usr/bin/env bash
# perf/instr_count.sh - machine instructions the worker thread executes per HTTP/1.1 keep-alive
# request, counted by valgrind's callgrind: the interpreter, C libraries (httptools, bytes
# ops, allocation, GC) and Python code together, in user space. Repeatable to about 1 % from
# run to run whatever else the machine does, where timings on this VM move by +-20 %
# (perf stat's hardware counters are not available here).
#
# nginx upstream on 127.0.0.1:18080, ftproxy (perf/configs/http.yaml, one worker) under
# callgrind with instrumentation off; wrk -c20 warms up, then instrumentation is switched on
# for SECS seconds of wrk -c20 and the worker thread's count is divided by the requests.
#   perf/instr_count.sh        # SECS=5 TOP=25 OUT_DIR=/tmp/ftproxy-instr
#   PROBE=floor perf/instr_count.sh   # the same count for perf/probe_floor.py (CPython's floor)
#   PROBE=lane perf/instr_count.sh    # ... for perf/probe_lane.py (a fused path's lower bound)
#   CONFIG=perf/configs/http-fault.yaml perf/instr_count.sh   # the same path with a filter added
#   WRK_HEADER="x-api-key: demo-key" CONFIG=perf/configs/http-python-apikey.yaml perf/instr_count.sh
#   H2=1 perf/instr_count.sh          # HTTP/2 (h2c): h2load -n $H2_N (2000) -c 10 -m 10 instead of wrk
# Under callgrind the proxy runs ~50x slower (a few hundred requests a second).
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
OUT_DIR=${OUT_DIR:-/tmp/ftproxy-instr}; SECS=${SECS:-5}; TOP=${TOP:-25}
PY=${PY:-$ROOT/.venv/bin/python}
URL=${URL:-http://127.0.0.1:18090/}  # https://... with a TLS CONFIG (perf/tls_configs.py writes ftproxy-18090.yaml)
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"; rm -f "$OUT_DIR"/callgrind.out*
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream ""
cd "$ROOT"
if [ -n "${PROBE:-}" ]; then
  [ "$PROBE" = lane ] || PROBE=floor
  SERVER=("$HERE/probe_$PROBE.py"); MATCH=probe_$PROBE
else
  SERVER=(-m proxy.server.main -c "${CONFIG:-$ROOT/perf/configs/http.yaml}" --concurrency 1 --drain-time-s 1
          -l warning --base-id 4715); MATCH=proxy.server.main
fi
setsid valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
  --callgrind-out-file="$OUT_DIR/callgrind.out" "$PY" "${SERVER[@]}" \
  >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
for i in $(seq 240); do curl -fsk -o /dev/null "$URL" && break; sleep 0.5; done
WRK_ARGS=(); [ -n "${WRK_HEADER:-}" ] && WRK_ARGS=(-H "$WRK_HEADER")  # WRK_HEADER="x-api-key: demo-key"
if [ "${H2:-0}" = 1 ]; then h2load -n 300 -c 10 -m 10 "$URL" >/dev/null    # warm-up, not counted
else wrk -t1 -c20 -d2s "${WRK_ARGS[@]}" "$URL" >/dev/null; fi
PID=$(pgrep -g "${PGS[-1]}" -f "$MATCH" | head -1)
callgrind_control -i on "$PID" >/dev/null 2>&1
if [ "${H2:-0}" = 1 ]; then h2load -n "${H2_N:-2000}" -c 10 -m 10 "$URL" > "$OUT_DIR/wrk.txt"
else wrk -t1 -c20 -d"${SECS}s" "${WRK_ARGS[@]}" "$URL" > "$OUT_DIR/wrk.txt"; fi
callgrind_control -i off "$PID" >/dev/null 2>&1
callgrind_control -d "$PID" >/dev/null 2>&1
REQ=$(awk '/requests in/ {print $1} /^requests:/ {print $8}' "$OUT_DIR/wrk.txt")
# The worker is the thread with the most instructions; per-thread files end in -NN.
best=""; bestn=0
for f in "$OUT_DIR"/callgrind.out.[0-9]*-*; do  # dump 1, one file per thread
  n=$(awk '/^totals:/ {print $2; exit}' "$f")
  if [ "${n:-0}" -gt "$bestn" ]; then best=$f; bestn=$n; fi
done
python3 - "$best" "$REQ" "$TOP" <<'PY'
import re, subprocess, sys
path, requests, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True).stdout
rows = [(int(m.group(1).replace(",", "")), m.group(2)) for m in
        re.finditer(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", out, re.M)]
total = next(n for n, name in rows if name == "PROGRAM")
print(f"requests {requests}  instructions per request {total / requests:.0f}  ({path})")
for n, name in [r for r in rows if r[1] != "PROGRAM"][:top]:
    print(f"{n / requests:9.0f}  {name.split('/')[-1]}")
PY
