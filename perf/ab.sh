#!/usr/bin/env bash
# perf/ab.sh - A/B two versions of ftproxy on the keep-alive case, in paired rounds.
#
#   perf/ab.sh REV_A REV_B        # e.g. perf/ab.sh HEAD~1 HEAD, or a path to a checkout
#
# Why: on this shared 2-vCPU VM a timed run moves by 10-40 % from one minute to the next, so
# two peers.sh runs cannot tell a 10 % change from noise, and instruction counts
# (perf/instr_count.sh) miss what the kernel does (how often a peer is woken, for one).
# Both versions run at once, each on its own port and pinned to CPU 0, against one nginx
# upstream (perf/upstream.sh) on CPU 1; the rounds alternate A, B (wrk -t1 -c50 on CPU 1,
# SECS each). Per round it reads each proxy's user and system CPU time from /proc and reports
# CPU µs per request; the result is the median of the per-round ratios B/A, which cancels
# the drift between rounds.
# Knobs (env): ROUNDS=8 SECS=5 OUT_DIR=/tmp/ftproxy-ab[-BASE], PERF_PORT_BASE (perf/ports.sh:
# upstream BASE, the versions on BASE+11 and BASE+12, admins BASE+1831/1832; default 18080,
# or auto). A git revision is checked out with
# `git worktree` under OUT_DIR (removed at the end); both versions run with this checkout's
# .venv (the dependencies), the version's own code first on PYTHONPATH.
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 REV_A REV_B" >&2; exit 2; }
ROUNDS=${ROUNDS:-8}; SECS=${SECS:-5}
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-ab; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}
PY=$ROOT/.venv/bin/python
perf_need_free "$PERF_UPSTREAM_PORT" "$PERF_AB_A_PORT" "$PERF_AB_B_PORT" "$PERF_AB_ADMIN_A_PORT" "$PERF_AB_ADMIN_B_PORT"
rm -rf "$OUT_DIR"; mkdir -p "$OUT_DIR"
PGS=(); TREES=()
cleanup() {
  for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for t in "${TREES[@]}"; do git -C "$ROOT" worktree remove --force "$t" 2>/dev/null || true; done
}
trap cleanup EXIT
source "$HERE/upstream.sh"
start_upstream 1

checkout() {  # a directory as it is, or a git revision in a worktree
  local rev=$1 dir=$2
  if [ -d "$rev/proxy" ]; then (cd "$rev" && pwd); return; fi
  git -C "$ROOT" worktree add --detach -q "$dir" "$rev" >/dev/null
  echo "$dir"
}
DIR_A=$(checkout "$1" "$OUT_DIR/a"); [ -d "$1/proxy" ] || TREES+=("$OUT_DIR/a")
DIR_B=$(checkout "$2" "$OUT_DIR/b"); [ -d "$2/proxy" ] || TREES+=("$OUT_DIR/b")

start_proxy() {  # dir port admin base_id -> the proxy's pid (the process doing the work)
  local dir=$1 port=$2 admin=$3 base=$4 cfg=$OUT_DIR/http-$2.yaml
  sed -e "s/port_value: 18090/port_value: $port/" -e "s/port_value: 19901/port_value: $admin/" \
    -e "s/port_value: 18080/port_value: $PERF_UPSTREAM_PORT/" "$dir/perf/configs/http.yaml" > "$cfg"
  (cd "$dir" && PYTHONPATH="$dir" exec setsid taskset -c 0 "$PY" -m proxy.server.main -c "$cfg" \
    --concurrency 1 --drain-time-s 1 -l warning --base-id "$base") >"$OUT_DIR/proxy-$port.log" 2>&1 </dev/null &
  echo $! > "$OUT_DIR/pid-$port"   # setsid and taskset exec: this is the proxy's pid and group
  PGS+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && return; sleep 0.1; done
  echo "proxy on $port did not start; see $OUT_DIR/proxy-$port.log" >&2; exit 1
}
A=$PERF_AB_A_PORT B=$PERF_AB_B_PORT
start_proxy "$DIR_A" "$A" "$PERF_AB_ADMIN_A_PORT" "$(perf_base_id 4721)"
start_proxy "$DIR_B" "$B" "$PERF_AB_ADMIN_B_PORT" "$(perf_base_id 4722)"

cpu_ticks() {  # utime + stime of every thread of the process, in clock ticks
  awk '{print $14 + $15}' "/proc/$(cat "$OUT_DIR/pid-$1")/stat"
}
measure() {  # port -> "requests ticks"
  local port=$1 before after reqs
  before=$(cpu_ticks "$port")
  reqs=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "http://127.0.0.1:$port/" \
         | awk '/requests in/ {print $1}')
  after=$(cpu_ticks "$port")
  echo "$reqs $((after - before))"
}
for port in "$A" "$B"; do taskset -c 1 wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null; done
: > "$OUT_DIR/rounds.txt"
for r in $(seq "$ROUNDS"); do
  echo "$r $(measure "$A") $(measure "$B")" | tee -a "$OUT_DIR/rounds.txt"
done
"$PY" - "$OUT_DIR/rounds.txt" "$1" "$2" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, a, b, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [list(map(int, line.split())) for line in open(path) if line.strip()]
us = lambda reqs, ticks: ticks / hz * 1e6 / reqs
ua = [us(r[1], r[2]) for r in rows]
ub = [us(r[3], r[4]) for r in rows]
ratios = [y / x for x, y in zip(ua, ub)]
print(f"A {a}: CPU us/request median {statistics.median(ua):.1f} (rounds {', '.join(f'{v:.0f}' for v in ua)})")
print(f"B {b}: CPU us/request median {statistics.median(ub):.1f} (rounds {', '.join(f'{v:.0f}' for v in ub)})")
print(f"B/A paired (median of per-round ratios): {statistics.median(ratios):.3f} "
      f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
PY
