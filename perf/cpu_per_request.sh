#!/usr/bin/env bash
# perf/cpu_per_request.sh - CPU time per HTTP/1.1 keep-alive request of real Envoy and of
# ftproxy, for the router alone and for a filter before it, measured the same way for both:
# what a filter costs each of them relative to its own router-only config.
#
# For each system (Envoy, ftproxy) and each row (config; request header), RUNS times in turn:
# the proxy alone on the base's ports (perf/ports.sh), one worker (--concurrency 1), the nginx
# upstream (perf/upstream.sh) that is also the HTTP authorization service of
# configs/http-ext-authz-http.yaml, perf/grpc_authz_server.py for the gRPC row; wrk -t1
# -c$WRK_C (1) warms up for 1 s, then runs SECS seconds. The proxy's CPU time is utime+stime of its whole
# process from /proc/PID/stat (every thread, the kernel's share included), read after its
# admin says it is idle before and after the run; it is divided by the requests the proxy
# served in between (http.<prefix>.downstream_rq_total, perf/admin_stats.py). One connection,
# as perf/filter_cost.sh: no batching of events, the same for both systems. The table gives
# per row the median over the runs and each system's ratio to its own router row: the ratio of
# the medians and, in brackets, the median of each run's own ratio.
#   perf/cpu_per_request.sh                  # RUNS=3 SECS=10 -> $OUT_DIR/table.md
#   ROWS="router ext_authz" SYSTEMS=ftproxy perf/cpu_per_request.sh
#   ROWS="router lua" SYSTEMS=envoy RUNS=13 SECS=5 perf/cpu_per_request.sh   # Envoy's own Lua filter
#   PY=/work/main/.venv-314t/bin/python perf/cpu_per_request.sh    # ftproxy on 3.14t
# Knobs: PY (ftproxy's interpreter, default .venv/bin/python), ENVOY_BIN (.venv/bin/envoy), WRK_C,
# PROXY_CPU / CLIENT_CPU (taskset lists; default: not pinned), OUT_DIR
# (/tmp/ftproxy-cpu-per-request[-BASE]). Loopback only; PERF_PORT_BASE=auto unless set.
# Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
export PERF_PORT_BASE=${PERF_PORT_BASE:-auto}
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-cpu-per-request; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}; RUNS=${RUNS:-3}; SECS=${SECS:-10}; WRK_C=${WRK_C:-1}
PY=${PY:-$ROOT/.venv/bin/python}; ENVOY_BIN=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
SYSTEMS=${SYSTEMS:-"envoy ftproxy"}
PROXY_CPU=${PROXY_CPU:-}; CLIENT_CPU=${CLIENT_CPU:-}
GRPC_HEADER="authorization: Bearer token1"
# name | config | request header ("" for none). The gRPC row's header (its server allows
# `Bearer token1`) is also sent to the router alone, so that its codec cost is no filter's.
ALL_ROWS=(
  "router|http.yaml|"
  "ext_authz|http-ext-authz-http.yaml|"
  "router+auth|http.yaml|$GRPC_HEADER"
  "ext_authz_grpc|http-ext-authz-grpc.yaml|$GRPC_HEADER"
  "lua|http-lua.yaml|"
)
ROWS=${ROWS:-"router ext_authz router+auth ext_authz_grpc"}
mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"
perf_need_free "$PERF_UPSTREAM_PORT" "$PERF_PROXY_PORT" "$PERF_ADMIN_PORT" "$PERF_AUTHZ_PORT"
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
pin() { [ -n "$1" ] && echo taskset -c "$1"; return 0; }
source "$HERE/upstream.sh"
start_upstream "$CLIENT_CPU"
if [[ " $ROWS " == *" ext_authz_grpc "* ]]; then
  PYTHONPATH="$ROOT" setsid $(pin "$CLIENT_CPU") "$PY" "$HERE/grpc_authz_server.py" "$PERF_AUTHZ_PORT" \
    >"$OUT_DIR/authz.log" 2>&1 </dev/null & PGS+=($!)
  for _ in $(seq 100); do grep -q "server on" "$OUT_DIR/authz.log" 2>/dev/null && break; sleep 0.1; done
fi
URL=http://127.0.0.1:$PERF_PROXY_PORT/

start_proxy() {  # system config -> sets PROXY_PG and PROXY_PID (the process doing the work)
  local system=$1 cfg=$2
  if [ "$system" = envoy ]; then
    setsid $(pin "$PROXY_CPU") "$ENVOY_BIN" -c "$cfg" --concurrency 1 --disable-hot-restart -l error \
      >"$OUT_DIR/envoy.log" 2>&1 </dev/null & PGS+=($!)
  else
    (cd "$ROOT" && PYTHONPATH="$ROOT" exec setsid $(pin "$PROXY_CPU") "$PY" -m proxy.server.main -c "$cfg" \
      --concurrency 1 --drain-time-s 1 -l warning --base-id "$(perf_base_id 4723)") \
      >"$OUT_DIR/ftproxy.log" 2>&1 </dev/null & PGS+=($!)
  fi
  PROXY_PG=${PGS[-1]}
  for _ in $(seq 200); do
    curl -fs -o /dev/null ${HEADER:+-H "$HEADER"} "$URL" && break
    kill -0 "$PROXY_PG" 2>/dev/null || { tail -5 "$OUT_DIR/$system.log" >&2; echo "$system exited" >&2; exit 1; }
    sleep 0.1
  done
  PROXY_PID=$PROXY_PG   # setsid (and taskset) exec: the pid is the proxy's
}
stop_proxy() {
  kill -TERM -- "-$PROXY_PG" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$PROXY_PG" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$PROXY_PG" 2>/dev/null || true
  local keep=() p   # (its group is gone: never signalled again, its number may be reused)
  for p in "${PGS[@]}"; do [ "$p" = "$PROXY_PG" ] || keep+=("$p"); done
  PGS=("${keep[@]}")
  for _ in $(seq 100); do (perf_need_free "$PERF_PROXY_PORT" "$PERF_ADMIN_PORT") 2>/dev/null && break; sleep 0.1; done
}
cpu_ticks() { awk '{print $14, $15}' "/proc/$PROXY_PID/stat"; }   # utime stime
served() { "$PY" "$HERE/admin_stats.py" "$CFG"; }

RESULTS=$OUT_DIR/runs.tsv; : > "$RESULTS"
for run in $(seq "$RUNS"); do
  for name in $ROWS; do
    row=""; for r in "${ALL_ROWS[@]}"; do [ "${r%%|*}" = "$name" ] && row=$r; done
    [ -n "$row" ] || { echo "unknown row $name" >&2; exit 2; }
    IFS='|' read -r _ config HEADER <<<"$row"
    CFG=$(perf_render "$HERE/configs/$config")
    WRK_ARGS=(); [ -n "$HEADER" ] && WRK_ARGS=(-H "$HEADER")
    for system in $SYSTEMS; do
      start_proxy "$system" "$CFG"
      $(pin "$CLIENT_CPU") wrk -t1 -c"$WRK_C" -d1s "${WRK_ARGS[@]}" "$URL" >/dev/null    # warm-up
      rq0=$(served); read -r u0 s0 <<<"$(cpu_ticks)"
      $(pin "$CLIENT_CPU") wrk -t1 -c"$WRK_C" -d"${SECS}s" "${WRK_ARGS[@]}" "$URL" >"$OUT_DIR/wrk.txt"
      rq1=$(served); read -r u1 s1 <<<"$(cpu_ticks)"
      stop_proxy
      non2xx=$(awk '/Non-2xx/ {print $NF}' "$OUT_DIR/wrk.txt"); non2xx=${non2xx:-0}
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$system" "$name" "$((rq1 - rq0))" "$((u1 - u0))" \
        "$((s1 - s0))" "$non2xx" \
        | tee -a "$RESULTS" >&2
    done
  done
done
"$PY" - "$RESULTS" "$(getconf CLK_TCK)" "$ROWS" "$SYSTEMS" "$SECS" "$WRK_C" <<'PY' | tee "$OUT_DIR/table.md"
import statistics, sys
path, hz, rows, systems, secs, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5], sys.argv[6]
total, user = {}, {}
for line in open(path):
    run, system, name, reqs, utime, stime, bad = line.split("\t")
    if int(bad):
        print(f"warning: {system} {name} run {run}: {bad.strip()} non-2xx answers", file=sys.stderr)
    per = lambda ticks: ticks / hz * 1e6 / max(int(reqs), 1)
    total.setdefault((system, name), []).append(per(int(utime) + int(stime)))
    user.setdefault((system, name), []).append(per(int(utime)))
base = {"ext_authz": "router", "ext_authz_grpc": "router+auth", "lua": "router"}
def rel(d, s, name):
    b = d.get((s, base.get(name, "")))
    if not b:
        return "—"
    # the medians' ratio, and the median of the ratios within each run (the rows of one run
    # are measured minutes apart, not hours: that cancels the machine's drift between runs)
    paired = statistics.median(x / y for x, y in zip(d[s, name], b))
    return f"{100 * (statistics.median(d[s, name]) / statistics.median(b) - 1):+.1f} % ({100 * (paired - 1):+.1f} %)"
runs = len(next(iter(total.values())))
print(f"CPU µs per request: utime+stime of the proxy process / requests it served (median of {runs} "
      f"runs of {secs} s, wrk -t1 -c{conns}, one worker); user: utime alone. vs. router: the ratio of "
      f"the medians (in brackets the median of the runs' own ratios)\n")
print("| row | " + " | ".join(f"{s} µs/req (runs) | {s} vs. router | {s} user µs/req | {s} user vs. router"
                             for s in systems) + " |")
print("|---|" + "---:|---:|---:|---:|" * len(systems))
for name in rows:
    cells = []
    for s in systems:
        if (s, name) not in total:
            cells.append("— | — | — | —")
            continue
        v = total[s, name]
        cells.append(f"{statistics.median(v):.1f} ({', '.join(f'{x:.0f}' for x in v)}) | {rel(total, s, name)} | "
                     f"{statistics.median(user[s, name]):.1f} | {rel(user, s, name)}")
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
