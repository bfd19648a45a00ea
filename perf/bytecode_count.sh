#!/usr/bin/env bash
# perf/bytecode_count.sh - bytecodes the worker executes per HTTP/1.1 keep-alive request.
#
# A deterministic companion to the timed benchmarks (see perf/bytecode_count.py): nginx
# upstream, ftproxy (perf/configs/http.yaml rendered with perf/ports.sh's ports, one worker)
# under the counting hook, wrk -c50 for a warm-up and then SECS seconds counted. The divisor is
# the proxy's own count of the requests served while counting was on (http.<prefix>.
# downstream_rq_total from its admin, read with nothing in flight before switching counting on
# and after switching it off: perf/admin_stats.py), so requests still in flight when wrk stops
# no longer bias a slow config (WRK_C=1 was the workaround); wrk's count is printed beside it
# (and used for a CONFIG without an admin). Prints bytecodes per request and the TOP functions
# by bytecodes per request.
#   perf/bytecode_count.sh            # SECS=3 TOP=40 OUT_DIR=/tmp/ftproxy-bytecodes[-BASE]
#   PERF_PORT_BASE=auto perf/bytecode_count.sh   # free ports when someone else runs perf too
#   WRK_HEADER="x-api-key: demo-key" CONFIG=perf/configs/http-rbac-apikey.yaml perf/bytecode_count.sh
#   WRK_C=1 ...    # one connection
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-bytecodes; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}; SECS=${SECS:-3}; TOP=${TOP:-40}
PY=${PY:-$ROOT/.venv/bin/python}
URL=${URL:-http://127.0.0.1:$PERF_PROXY_PORT/}  # https://... with a TLS CONFIG (perf/tls_configs.py writes ftproxy-$PERF_PROXY_PORT.yaml)
mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"; rm -f "$OUT_DIR/counts.json" "$OUT_DIR/counts.json.state"
perf_need_free "$PERF_UPSTREAM_PORT" "$PERF_PROXY_PORT" "$PERF_ADMIN_PORT"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream ""
CFG=$(perf_render "${CONFIG:-$ROOT/perf/configs/http.yaml}")
setsid env FTPROXY_BYTECODE_OUT="$OUT_DIR/counts.json" PYTHONPATH="$ROOT" "$PY" "$HERE/bytecode_count.py" \
  -c "$CFG" --concurrency 1 --drain-time-s 1 -l warning --base-id "$(perf_base_id 4714)" \
  >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
PROXY_PG=${PGS[-1]}
for i in $(seq 100); do
  curl -fsk -o /dev/null "$URL" && break
  kill -0 "$PROXY_PG" 2>/dev/null || { tail -5 "$OUT_DIR/proxy.log" >&2; echo "the proxy exited: $OUT_DIR/proxy.log" >&2; exit 1; }
  sleep 0.1
done
WRK_ARGS=(); [ -n "${WRK_HEADER:-}" ] && WRK_ARGS=(-H "$WRK_HEADER")  # WRK_HEADER="x-api-key: demo-key"
WRK_C=${WRK_C:-50}
wrk -t1 -c"$WRK_C" -d1s "${WRK_ARGS[@]}" "$URL" >/dev/null    # warm-up, not counted
PID=$(pgrep -g "$PROXY_PG" -f bytecode_count | head -1)
served() {  # the proxy's downstream_rq_total once nothing is in flight; "" without an admin
  "$PY" "$HERE/admin_stats.py" "$CFG" 2>>"$OUT_DIR/admin_stats.err" || true
}
switch() {  # switch on|off: signal the counter and wait until it says it switched
  kill -USR2 "$PID"
  for _ in $(seq 100); do [ "$(cat "$OUT_DIR/counts.json.state" 2>/dev/null)" = "$1" ] && return; sleep 0.05; done
  echo "counting did not switch $1" >&2; exit 1
}
RQ0=$(served)
switch on
wrk -t1 -c"$WRK_C" -d"${SECS}s" "${WRK_ARGS[@]}" "$URL" > "$OUT_DIR/wrk.txt"
[ -n "$RQ0" ] && served >/dev/null   # wait until the last requests and connections are done
switch off
RQ1=$(served)
kill -TERM "$PID"; for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
WRK_REQ=$(awk '/requests in/ {print $1}' "$OUT_DIR/wrk.txt")
if [ -n "$RQ0" ] && [ -n "$RQ1" ]; then REQ=$((RQ1 - RQ0)); SRC=proxy; else REQ=$WRK_REQ; SRC=wrk; fi
"$PY" - "$OUT_DIR" "$TOP" "$REQ" "$SRC" "$WRK_REQ" <<'PY'
import json, sys
out, top, requests, src, wrk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rows = json.load(open(f"{out}/counts.json"))
total = sum(r[3] for r in rows)
if src == "proxy":
    print(f"requests {requests}  bytecodes per request {total / requests:.0f}  (divided by the proxy's "
          f"count of requests served while counting; wrk counted {wrk}: {total / max(wrk, 1):.0f} per request)")
else:
    print(f"requests {requests}  bytecodes per request {total / requests:.0f}  (divided by wrk's count: "
          f"no admin in the config)")
for path, line, name, n in sorted(rows, key=lambda r: -r[3])[:top]:
    print(f"{n / requests:8.1f}  {path.split('/')[-1]}:{line} {name}")
PY
