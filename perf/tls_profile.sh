#!/usr/bin/env bash
# perf/tls_profile.sh - profile ftproxy's TLS path on one perf/tls.sh case: HTTPS keep-alive
# (CASE=ka, default), a full handshake per request (CASE=hs-ecdsa / hs-rsa) or TLS bulk
# (CASE=bulk: curl -k downloads of a 100 MiB file, one after another).
#
# The configs and certificates of perf/tls.sh (perf/tls_configs.py) in $OUT_DIR; the plain
# nginx upstream and wrk on CPU 1, ftproxy (one worker) on CPU 0, as in tls.sh. PROFILER=perf
# (default): Linux `perf record --call-graph dwarf` of `python -X perf`, self and children
# tables; PROFILER=cprofile: the worker thread under cProfile (perf/profile_inproc.py),
# tottime and cumulative tables (Python calls inflated: read it for where, not how much).
#
#   perf/tls_profile.sh     # ~20 s;  OUT_DIR=/tmp/ftproxy-tls-prof[-BASE]  SECS=8  CASE=ka|hs-ecdsa|hs-rsa|bulk  PROFILER=perf|cprofile
# Ports: tls.sh's (perf/ports.sh, PERF_PORT_BASE+400..416; 18480-18496 by default, or auto).
# Loopback only. Kills only the process groups it started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
PERF_PORT_BLOCK=tls   # tls.sh's ports and lock
source "$HERE/ports.sh"
DEF_OUT=/tmp/ftproxy-tls-prof; [ "$PERF_PORT_BASE" = 18080 ] || DEF_OUT+=-$PERF_PORT_BASE
OUT_DIR=${OUT_DIR:-$DEF_OUT}; SECS=${SECS:-8}; PROFILER=${PROFILER:-perf}; CASE=${CASE:-ka}
PY=$ROOT/.venv/bin/python
mkdir -p "$OUT_DIR"; rm -f "$OUT_DIR"/thread-*.prof
BULK_MB=1; [ "$CASE" = bulk ] && BULK_MB=100
"$PY" "$HERE/tls_configs.py" "$OUT_DIR" --bulk-mb "$BULK_MB"
PORT=$(awk '$1 == "ftproxy" {print $2}' "$OUT_DIR/ports.tsv")
[ "$CASE" = hs-rsa ] && PORT=$(awk '$1 == "ftproxy" {print $3}' "$OUT_DIR/ports.tsv")
WRK=(-t1 -c50); [ "$CASE" != ka ] && WRK+=(-H "Connection: close")
URL=https://127.0.0.1:$PORT/
perf_need_free $(awk '$1 == "direct" || $1 == "ftproxy" { for (i = 2; i <= 5; i++) if ($i != "-") print $i }' "$OUT_DIR/ports.tsv")
PGS=()
cleanup() { for p in "${PGS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
client() { env OPENSSL_CONF="$OUT_DIR/client-openssl.cnf" taskset -c 1 "$@"; }
drive() {  # drive SECONDS: the case's load (wrk prints its summary; bulk: MB/s per download)
  if [ "$CASE" = bulk ]; then
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do client curl -sk -o /dev/null -w '%{speed_download}\n' "${URL}big.bin"; done |
      awk '{ s += $1; n++ } END { printf "%d downloads, mean %.0f MB/s\n", n, n ? s / n / 1e6 : 0 }'
  else
    client wrk "${WRK[@]}" -d"$1s" "$URL"
  fi
}
setsid taskset -c 1 nginx -p "$OUT_DIR/" -e "$OUT_DIR/upstream.err" -c "$OUT_DIR/upstream.conf" \
  -g 'daemon off;' >"$OUT_DIR/upstream.log" 2>&1 </dev/null & PGS+=($!)
ARGS=(-c "$OUT_DIR/ftproxy.yaml" --concurrency 1 -l warning --disable-hot-restart)
if [ "$PROFILER" = cprofile ]; then
  setsid taskset -c 0 env FTPROXY_PROFILE_DIR="$OUT_DIR" PYTHONPATH="$ROOT" "$PY" "$HERE/profile_inproc.py" \
    "${ARGS[@]}" --drain-time-s 1 >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
else
  setsid taskset -c 0 env PYTHONPATH="$ROOT" "$PY" -X perf -m proxy.server.main "${ARGS[@]}" \
    >"$OUT_DIR/proxy.log" 2>&1 </dev/null & PGS+=($!)
fi
PROXY_PG=${PGS[-1]}
for i in $(seq 150); do client curl -fsk -o /dev/null "$URL" && break; sleep 0.1; done
drive 2 >/dev/null    # warm-up
PID=$(pgrep -g "$PROXY_PG" -f python | head -1)
if [ "$PROFILER" = cprofile ]; then
  drive "$SECS" | tee "$OUT_DIR/wrk.txt"
  kill -TERM "$PID"; for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  for f in "$OUT_DIR"/thread-*.prof; do
    "$PY" -c "import pstats,sys; p=pstats.Stats(sys.argv[1]); p.sort_stats('tottime').print_stats(45); p.sort_stats('cumulative').print_stats(45)" "$f"
  done > "$OUT_DIR/cprofile.txt"; echo "cProfile: $OUT_DIR/cprofile.txt"
  exit 0
fi
perf record -F 499 --call-graph dwarf,16384 -p "$PID" -o "$OUT_DIR/perf.data" -- sleep "$SECS" 2>"$OUT_DIR/perf-record.err" &
REC=$!
drive "$SECS" | tee "$OUT_DIR/wrk.txt"
wait $REC || true
perf report -i "$OUT_DIR/perf.data" --no-children --sort dso,symbol --stdio --percent-limit 0.5 -g none \
  > "$OUT_DIR/perf.self.txt" 2>/dev/null
perf report -i "$OUT_DIR/perf.data" --children --sort symbol --stdio --percent-limit 1.5 -g none \
  > "$OUT_DIR/perf.children.txt" 2>/dev/null
perf report -i "$OUT_DIR/perf.data" --no-children --sort dso --stdio -g none > "$OUT_DIR/perf.dso.txt" 2>/dev/null
echo "perf report: $OUT_DIR/perf.self.txt $OUT_DIR/perf.children.txt $OUT_DIR/perf.dso.txt"
