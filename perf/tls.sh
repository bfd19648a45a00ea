#!/usr/bin/env bash
# perf/tls.sh - TLS termination benchmark: ftproxy beside HAProxy, nginx and Envoy 1.40 in one
# run, and nginx serving TLS itself ("direct"), in front of a plain-HTTP nginx upstream.
#
#   perf/tls.sh              # full: RUNS=3 rounds x 10 s per case, 3 x 200 MiB bulk (~14 min)
#   QUICK=1 perf/tls.sh      # smoke run: RUNS=1 x 3 s, 2 x 100 MiB (~1.5 min)
#
# Cases (every system gets the same client runs; rounds interleave the systems, so slow drift
# of this VM hits every system alike; medians are reported):
#   ka        HTTPS keep-alive: wrk -t1 -c$CONNS over https, GET / (100 B body), ECDSA P-256
#             certificate. Proxy CPU µs per request (utime+stime of its process group from
#             /proc/<pid>/stat, before/after) and requests/s.
#   ka-plain  the same over plain HTTP to the same processes (a plain listener each): the
#             reference that shows what TLS adds per request to each system's cost.
#   hs-ecdsa  Full-handshake rate: wrk -t1 -c$HS_CONNS -H "Connection: close" over https: every
#   hs-rsa    request is a new TCP connection and a full TLS handshake (session resumption is off
#             on every server: no tickets, no session cache; checked before the runs with
#             `openssl s_client -sess_out/-sess_in`). ECDSA P-256 and RSA 2048 certificates.
#             Handshakes/s (= requests/s) and proxy CPU µs per handshake.
#   bulk      TLS bulk: curl -k downloads of /big.bin ($BULK_MB MiB) over one TLS connection,
#             $BULK_REPS per round; MB/s and the proxy's CPU %.
# Why wrk with `Connection: close` for handshakes: wrk speaks TLS itself, reconnects (new
# socket, new handshake) when a response says close, keeps 50 handshakes in flight so the
# server is the bottleneck and not a one-at-a-time client (openssl s_time), and is the client
# of the keep-alive case and of bench.py's plain `newconn` case, so the numbers compare.
#
# Every client offers one TLS 1.3 suite (OPENSSL_CONF=$WORK/client-openssl.cnf, CLIENT_CIPHERS,
# default TLS_AES_128_GCM_SHA256), so every server negotiates the same cipher; the negotiated
# version / cipher / group of each system is printed with the results.
# Pinning as ../shared/tools/peers.sh: the server under test on CPU 0; wrk, curl and the
# upstream nginx on CPU 1 (also "direct": the upstream nginx terminates TLS itself there).
# A fast proxy is then capped by CPU 1, which is why proxy CPU per request/handshake is the
# number to compare, beside the rates the targets name.
#
# Knobs: QUICK=1, RUNS, DURATION, CONNS=50, HS_CONNS=50, BULK_MB, BULK_REPS, ONLY=ka,ka-plain,
#   hs-ecdsa,hs-rsa,bulk, ENVOY=0 (leave Envoy out), ENVOY_BIN (default .venv/bin/envoy), CLIENT_CIPHERS
#   ("" = the client's defaults), OUT (JSON, default perf/tls.json), FTPROXY_CMD (a template with
#   {config} and {concurrency}, as perf/run.sh; default: the epoch entry point, one worker).
# Ports (127.0.0.1 only), with the default PERF_PORT_BASE (perf/ports.sh; BASE+400..BASE+416
# otherwise, or PERF_PORT_BASE=auto): 18480 upstream HTTP; TLS ECDSA/RSA/plain HTTP: 18481/18482/-
# direct nginx, 18483/18484/18493 HAProxy, 18485/18486/18494 nginx, 18487/18488/18495 Envoy (admin
# 18489), 18490/18491/18496 ftproxy (admin 18492). Servers run in the foreground of their own sessions with configs in a fresh
# /tmp/perftls.XXXXXX; every process group started here is killed on exit (the dir is kept on
# failure). Measurements, not tests: nothing here asserts timings.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd); cd "$ROOT"
PERF_PORT_BLOCK=tls   # ports BASE+400..416: its own lock (BASE.tls), beside run.sh on BASE
source "$HERE/ports.sh"

need=()
for t in wrk:wrk haproxy:haproxy nginx:nginx taskset:util-linux curl:curl openssl:openssl; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[tls] installing: ${need[*]}" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  for s in nginx haproxy; do
    systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true
  done
fi

if [ "${QUICK:-0}" = 1 ]; then
  RUNS=${RUNS:-1} DURATION=${DURATION:-3s} BULK_MB=${BULK_MB:-100} BULK_REPS=${BULK_REPS:-2}
fi
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-50} HS_CONNS=${HS_CONNS:-50}
BULK_MB=${BULK_MB:-200} BULK_REPS=${BULK_REPS:-3} ONLY=${ONLY:-ka,ka-plain,hs-ecdsa,hs-rsa,bulk}
CLIENT_CIPHERS=${CLIENT_CIPHERS-TLS_AES_128_GCM_SHA256}
ENVOY=${ENVOY:-1} ENVOY_BIN=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
OUT=${OUT:-$HERE/tls.json}
PY=$ROOT/.venv/bin/python
FTPROXY_CMD=${FTPROXY_CMD:-"$PY -m proxy.server.main -c {config} --concurrency {concurrency} -l warning --disable-hot-restart"}
PROXY_CPU=0 CLIENT_CPU=1
WORK=$(mktemp -d /tmp/perftls.XXXXXX)
ROWS=$WORK/rows.tsv PROBES=$WORK/probes.tsv; : > "$ROWS"; : > "$PROBES"
declare -A PG=()   # name -> process group id of what we started

log() { printf '[tls %s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
  local rc=$? name
  for name in "${!PG[@]}"; do kill -TERM -- "-${PG[$name]}" 2>/dev/null || true; done
  sleep 0.5
  for name in "${!PG[@]}"; do kill -KILL -- "-${PG[$name]}" 2>/dev/null || true; done
  [ "$rc" -ne 0 ] && log "failed (rc=$rc); logs kept in $WORK"
  [ "$rc" -eq 0 ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME CPU CMD... : in a new session (pgid == $!) pinned to CPU
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 < /dev/null &
  PG[$name]=$!
}

# Clients: their OpenSSL reads the client config (one TLS 1.3 suite), servers never do.
client() { env OPENSSL_CONF="$WORK/client-openssl.cnf" taskset -c "$CLIENT_CPU" "$@"; }

wait_https() {  # wait_https PORT [scheme] : until https://127.0.0.1:PORT/ answers 2xx (15 s max)
  local i url=${2:-https}://127.0.0.1:$1/
  for i in $(seq 150); do client curl -fsk -o /dev/null "$url" && return 0; sleep 0.1; done
  log "not ready: $url"; return 1
}

pg_ticks() {  # pg_ticks PGID : "user system" clock ticks used so far by the group's processes
  local u=0 s=0 p pu ps
  for p in $(pgrep -g "$1"); do
    read -r pu ps < <(awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    u=$((u + ${pu:-0})) s=$((s + ${ps:-0}))
  done
  echo "$u $s"
}

# ---------------------------------------------------------------- configs and servers
log "work dir $WORK"
"$PY" "$HERE/tls_configs.py" "$WORK" --bulk-mb "$BULK_MB" --client-ciphers "$CLIENT_CIPHERS"
SYSTEMS=(direct haproxy nginx); [ "$ENVOY" = 1 ] && SYSTEMS+=(envoy); SYSTEMS+=(ftproxy)
declare -A ECDSA=() RSA=() PLAIN=() ADMIN=()
while read -r s e r p a; do ECDSA[$s]=$e RSA[$s]=$r PLAIN[$s]=$p ADMIN[$s]=$a; done < "$WORK/ports.tsv"
for s in "${SYSTEMS[@]}"; do
  for port in "${ECDSA[$s]}" "${RSA[$s]}" "${PLAIN[$s]}" "${ADMIN[$s]/-/}"; do
    [ -n "$port" ] || continue
    ss -Hltn "sport = :$port" | grep -q . && { log "port $port is already in use (PERF_PORT_BASE=$PERF_PORT_BASE; try auto)"; exit 1; }
  done
done
start upstream "$CLIENT_CPU" nginx -p "$WORK/" -e "$WORK/upstream.err" -c "$WORK/upstream.conf" -g 'daemon off;'
start haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg"
start nginx "$PROXY_CPU" nginx -p "$WORK/" -e "$WORK/nginx-proxy.err" -c "$WORK/nginx-proxy.conf" -g 'daemon off;'
[ "$ENVOY" = 1 ] && start envoy "$PROXY_CPU" "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart -l error
cmd=${FTPROXY_CMD//\{config\}/$WORK/ftproxy.yaml}; cmd=${cmd//\{concurrency\}/1}
start ftproxy "$PROXY_CPU" env PYTHONPATH="$ROOT" bash -c "cd $ROOT && exec $cmd"
for s in "${SYSTEMS[@]}"; do
  wait_https "${ECDSA[$s]}"; wait_https "${RSA[$s]}"; wait_https "${PLAIN[$s]}" http
done

# What each system negotiates, and that it refuses to resume a session (a full handshake per
# connection in the hs cases): one connection saves its session (TLS 1.3: the ticket, if the
# server sent one), a second offers it.  probes.tsv: system, cert, first, second, protocol, cipher, group
probe() {
  local sess=$WORK/probe.sess req='GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' a b
  rm -f "$sess"
  a=$(printf "$req" | client openssl s_client -connect "127.0.0.1:$1" -servername localhost -ign_eof -sess_out "$sess" 2>&1 || true)
  b="no session to offer"   # the server sent no TLS 1.3 ticket (Envoy with resumption off)
  [ -s "$sess" ] && b=$(printf "$req" | client openssl s_client -connect "127.0.0.1:$1" -servername localhost -ign_eof -sess_in "$sess" 2>&1 | grep -oE '^(New|Reused)' | head -1 || true)
  printf '%s\t%s\t%s\t%s\n' "$(grep -oE '^(New|Reused)' <<< "$a" | head -1)" "$b" \
    "$(sed -nE 's/^(New|Reused), (TLSv[0-9.]+), Cipher is (.*)/\2\t\3/p' <<< "$a" | head -1)" \
    "$(sed -nE 's/^(Server Temp Key|Negotiated TLS1.3 group): ([^,]*).*/\2/p' <<< "$a" | head -1)"
}
for s in "${SYSTEMS[@]}"; do
  for kind in ecdsa rsa; do
    port=${ECDSA[$s]}; [ "$kind" = rsa ] && port=${RSA[$s]}
    line=$(probe "$port"); printf '%s\t%s\t%s\n' "$s" "$kind" "$line" >> "$PROBES"
    case "$line" in *Reused*) log "$s/$kind resumed a session: the handshake case would not be full handshakes"; exit 1;; esac
  done
done

# ---------------------------------------------------------------- runners
# wrk_once PORT [warmup] [wrk args...]: requests, duration µs, p50 µs, p99 µs, socket errors, non-2xx
wrk_once() {
  local port=$1 d=$DURATION scheme=https; [ "${2:-}" = warmup ] && d=1s; shift 2
  [ "$port" = "${PLAIN_PORT:-}" ] && scheme=http
  client wrk -t1 -d"$d" --timeout 10s -s "$WORK/report.lua" "$@" "$scheme://127.0.0.1:$port/" | grep '^RESULT' | cut -f2-
}
ka_once() { wrk_once "$1" "${2:-}" -c"$CONNS"; }
plain_once() { PLAIN_PORT=$1 wrk_once "$1" "${2:-}" -c"$CONNS"; }
hs_once() { wrk_once "$1" "${2:-}" -c"$HS_CONNS" -H "Connection: close"; }
bulk_once() {  # bytes, seconds, MB/s, failed or short downloads
  local args=() i n=$BULK_REPS; [ "${2:-}" = warmup ] && n=1
  for i in $(seq "$n"); do args+=(-o /dev/null "https://127.0.0.1:$1/big.bin"); done
  { client curl -skf -w '%{size_download} %{time_total}\n' "${args[@]}" || true; } |
    awk -v want=$((BULK_MB * 1024 * 1024)) -v n="$n" '$1 == want { b += $1; t += $2; ok++ }
      END { printf "%d\t%.4f\t%.1f\t%d", b, t, t ? b / t / 1e6 : 0, n - ok }'
}

# rounds "CASE RUNNER KIND"...: one warm-up per system and case, then RUNS rounds with the
# systems interleaved (and, given several cases, each system's cases back to back: ka and
# ka-plain of one system are measured seconds apart). rows.tsv: case, system, round, runner
# metrics..., proxy user ticks, system ticks.
port_of() { case $2 in rsa) echo "${RSA[$1]}";; plain) echo "${PLAIN[$1]}";; *) echo "${ECDSA[$1]}";; esac; }
rounds() {
  local r s c sec fn kind port pg u0 s0 u1 s1 line
  for s in "${SYSTEMS[@]}"; do
    for c in "$@"; do read -r sec fn kind <<< "$c"; "$fn" "$(port_of "$s" "$kind")" warmup > /dev/null; done
  done
  for r in $(seq "$RUNS"); do
    for s in "${SYSTEMS[@]}"; do
      for c in "$@"; do
        read -r sec fn kind <<< "$c"; port=$(port_of "$s" "$kind")
        pg=""; [ "$s" != direct ] && pg=${PG[$s]}
        log "$sec round $r/$RUNS: $s"
        [ -n "$pg" ] && read -r u0 s0 < <(pg_ticks "$pg")
        line=$("$fn" "$port")
        [ -n "$pg" ] && read -r u1 s1 < <(pg_ticks "$pg")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sec" "$s" "$r" "$line" "${pg:+$((u1 - u0))}" "${pg:+$((s1 - s0))}" >> "$ROWS"
      done
    done
  done
}

only() { [[ ",$ONLY," == *",$1,"* ]]; }
KA=(); only ka && KA+=("ka ka_once ecdsa"); only ka-plain && KA+=("ka-plain plain_once plain")
[ ${#KA[@]} -gt 0 ] && rounds "${KA[@]}"
only hs-ecdsa && rounds "hs-ecdsa hs_once ecdsa"
only hs-rsa && rounds "hs-rsa hs_once rsa"
only bulk && rounds "bulk bulk_once ecdsa"

# The servers' own count of handshakes and resumptions (Envoy, ftproxy): a cross-check that
# the hs cases were full handshakes.
STATS=$WORK/ssl_stats.txt; : > "$STATS"
for s in envoy ftproxy; do
  [[ " ${SYSTEMS[*]} " == *" $s "* ]] || continue
  curl -fs "http://127.0.0.1:${ADMIN[$s]}/stats" 2>/dev/null |
    grep -E '^listener\..*ssl\.(handshake|session_reused|connection_error): ' | sed "s/^/$s /" >> "$STATS" || true
done

# ---------------------------------------------------------------- report
export ROWS PROBES STATS OUT RUNS DURATION CONNS HS_CONNS BULK_MB BULK_REPS CLIENT_CIPHERS
export CLK_TCK=$(getconf CLK_TCK) CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
export COMMAND="${QUICK:+QUICK=$QUICK }perf/tls.sh" FTPROXY_CMD
export VERSIONS="wrk=$(wrk -v 2>&1 | awk 'NR==1{print $2}'); $(haproxy -v | awk 'NR==1{print $1"="$3}');\
 $(nginx -v 2>&1 | cut -d' ' -f3); $(curl -V | awk 'NR==1{print $1"="$2}'); $(openssl version | awk '{print $1"="$2}')\
 $([ "$ENVOY" = 1 ] && echo "; envoy=$("$ENVOY_BIN" --version 2>/dev/null | grep -o '/1\.[0-9.]*/' | tr -d /)")\
 ; pyOpenSSL=$("$PY" -c 'import OpenSSL; from OpenSSL import SSL; print(OpenSSL.__version__, SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())')"
"$PY" "$HERE/tls_report.py" | tee "${OUT%.json}.txt"
