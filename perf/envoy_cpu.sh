#!/usr/bin/env bash
# perf/envoy_cpu.sh - real Envoy's own CPU time per request (utime+stime of the envoy process,
# /proc/PID/stat, all its threads) for configs of perf/configs/, one worker (--concurrency 1),
# the nginx upstream of perf/upstream.sh, wrk -c$WRK_C (1) for SECS (6) seconds per rep; the
# divisor is Envoy's own downstream_rq_total over the same window. For a filter's relative
# cost in Envoy: alternate the router-only config and the filter's, and compare rounds:
#   REPS=1 perf/envoy_cpu.sh http.yaml http-lua.yaml http.yaml http-lua.yaml http.yaml http-lua.yaml
#   WRK_C=10 ... (fewer wake-ups per request)
# Timed, not counted: on a loaded machine a round moves by +-15 %. Loopback only; kills only the
# process groups it started. ENVOY (default: $ROOT/.venv/bin/envoy).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
ENVOY=${ENVOY:-$ROOT/.venv/bin/envoy}
[ -x "$ENVOY" ] || { echo "no Envoy at $ENVOY (set ENVOY=...)" >&2; exit 2; }
OUT_DIR=${OUT_DIR:-/tmp/ftproxy-envoy-cpu}; mkdir -p "$OUT_DIR"
SECS=${SECS:-6}; REPS=${REPS:-3}; WRK_C=${WRK_C:-1}
PERF_PORT_BASE=${PERF_PORT_BASE:-auto}
source "$HERE/ports.sh"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream ""
URL=http://127.0.0.1:$PERF_PROXY_PORT/
TCK=$(getconf CLK_TCK)
served() {  # downstream_rq_total of every HCM, from Envoy's admin
  curl -fs "http://127.0.0.1:$PERF_ADMIN_PORT/stats?filter=downstream_rq_total" |
    awk -F': ' '/^http\..*\.downstream_rq_total/ {s += $2} END {print s + 0}'
}
for cfg in "$@"; do
  CFG=$(perf_render "$HERE/configs/$cfg")
  setsid "$ENVOY" -c "$CFG" --concurrency 1 --base-id "$(perf_base_id 4715)" -l warning \
    >"$OUT_DIR/envoy.log" 2>&1 </dev/null & PG=$!; PGS+=("$PG")
  for _ in $(seq 100); do curl -fs -o /dev/null "$URL" && break; sleep 0.1; done
  PID=$(pgrep -g "$PG" -x envoy | head -1)
  [ -n "$PID" ] || { tail -5 "$OUT_DIR/envoy.log" >&2; echo "Envoy did not start: $OUT_DIR/envoy.log" >&2; exit 1; }
  wrk -t1 -c"$WRK_C" -d2s "$URL" >/dev/null   # warm-up, not counted
  for rep in $(seq "$REPS"); do
    rq0=$(served); t0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    wrk -t1 -c"$WRK_C" -d"${SECS}s" "$URL" >/dev/null
    t1=$(awk '{print $14 + $15}' "/proc/$PID/stat"); rq1=$(served)
    awk -v c="$cfg" -v r=$((rq1 - rq0)) -v t=$((t1 - t0)) -v k="$TCK" -v w="$WRK_C" \
      'BEGIN {printf "%s -c%s: requests %d cpu %.2f s -> %.1f us/req\n", c, w, r, t / k, 1e6 * t / k / r}'
  done
  kill -TERM -- "-$PG"; for _ in $(seq 50); do kill -0 "$PG" 2>/dev/null || break; sleep 0.1; done
done
