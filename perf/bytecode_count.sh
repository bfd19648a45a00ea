#!/usr/bin/env bash
# perf/bytecode_count.sh - bytecodes the worker executes per HTTP/1.1 keep-alive request.
#
# A deterministic companion to the timed benchmarks (see perf/bytecode_count.py): nginx
# upstream on 127.0.0.1:18080, ftproxy (perf/configs/http.yaml, one worker) under the
# counting hook, wrk -c50 for a warm-up and then SECS seconds counted. Prints bytecodes per
# request and the TOP functions by bytecodes per request.
#   perf/bytecode_count.sh            # SECS=3 TOP=40 OUT_DIR=/tmp/ftproxy-bytecodes
#   WRK_HEADER="x-api-key: demo-key" CONFIG=perf/configs/http-rbac-apikey.yaml perf/bytecode_count.sh
#   WRK_C=1 ...    # one connection: the requests still in flight when counting stops (up to
#                  # WRK_C of them, counted but not in wrk's total) stop biasing a slow config
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
OUT_DIR=${OUT_DIR:-/tmp/ftproxy-bytecodes}; SECS=${SECS:-3}; TOP=${TOP:-40}
PY=${PY:-$ROOT/.venv/bin/python}
URL=${URL:-http://127.0.0.1:18090/}  # https://... with a TLS CONFIG (perf/tls_configs.py writes ftproxy-18090.yaml)
mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream ""
setsid env FTPROXY_BYTECODE_OUT="$OUT_DIR/counts.json" PYTHONPATH="$ROOT" "$PY" "$HERE/bytecode_count.py" \
  -c "${CONFIG:-$ROOT/perf/configs/http.yaml}" --concurrency 1 --drain-time-s 1 -l warning --base-id 4714 \
  >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
PROXY_PG=${PGS[-1]}
for i in $(seq 100); do curl -fsk -o /dev/null "$URL" && break; sleep 0.1; done
WRK_ARGS=(); [ -n "${WRK_HEADER:-}" ] && WRK_ARGS=(-H "$WRK_HEADER")  # WRK_HEADER="x-api-key: demo-key"
WRK_C=${WRK_C:-50}
wrk -t1 -c"$WRK_C" -d1s "${WRK_ARGS[@]}" "$URL" >/dev/null    # warm-up, not counted
PID=$(pgrep -g "$PROXY_PG" -f bytecode_count | head -1)
kill -USR2 "$PID"; sleep 0.2
wrk -t1 -c"$WRK_C" -d"${SECS}s" "${WRK_ARGS[@]}" "$URL" > "$OUT_DIR/wrk.txt"
kill -TERM "$PID"; for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
"$PY" - "$OUT_DIR" "$TOP" <<'PY'
import json, re, sys
out, top = sys.argv[1], int(sys.argv[2])
requests = int(re.search(r"(\d+) requests in", open(f"{out}/wrk.txt").read()).group(1))
rows = json.load(open(f"{out}/counts.json"))
total = sum(r[3] for r in rows)
print(f"requests {requests}  bytecodes per request {total / requests:.0f}")
for path, line, name, n in sorted(rows, key=lambda r: -r[3])[:top]:
    print(f"{n / requests:8.1f}  {path.split('/')[-1]}:{line} {name}")
PY
