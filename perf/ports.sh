# perf/ports.sh - sourced by every perf script that binds a port (not run alone).
# Sets and exports PERF_PORT_BASE and PERF_<ROLE>_PORT (perf/ports.py has the table; the
# default base 18080 gives upstream 18080, proxy listener 18090, admin 19901), so that several
# people can run the perf scripts at once:
#   PERF_PORT_BASE=28080 perf/instr_count.sh   # 28080 / 28090 / 29901 ...
#   PERF_PORT_BASE=auto perf/instr_count.sh    # the first free base of 10080, 12080, ... 30080
# A run holds an flock on /tmp/ftproxy-perf-ports/BASE.lock for its lifetime, so that two perf
# runs on one base refuse to start instead of measuring each other's servers; the scripts it
# starts (run.sh -> bench.py, instr_count.sh) inherit the base and do not lock again. tls.sh and
# tls_profile.sh set PERF_PORT_BLOCK=tls first: their ports (BASE+400..416) are apart from the
# others', so they lock BASE.tls.lock and can run beside run.sh on the same base, as before.
# Functions: perf_render CONFIG -> path of CONFIG rendered with this base's ports (in OUT_DIR,
# or $1's dir when OUT_DIR is unset); perf_need_free PORT... -> exit with a message naming the
# busy ones; perf_base_id N -> the hot-restart --base-id N moved with the base (ftproxy's
# hot-restart socket is a second thing two runs could share: N itself with the default base).
PERF_PORTS_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ports.py
PERF_LOCK_DIR=${PERF_LOCK_DIR:-/tmp/ftproxy-perf-ports}

PERF_LOCK_SUFFIX=${PERF_PORT_BLOCK:+.$PERF_PORT_BLOCK}

perf_lock_base() {  # perf_lock_base BASE: 0 when this shell now holds BASE's lock
  mkdir -p "$PERF_LOCK_DIR"; chmod 1777 "$PERF_LOCK_DIR" 2>/dev/null || true
  exec {PERF_LOCK_FD}>>"$PERF_LOCK_DIR/$1$PERF_LOCK_SUFFIX.lock"
  if flock -n "$PERF_LOCK_FD"; then echo $$ > "$PERF_LOCK_DIR/$1$PERF_LOCK_SUFFIX.pid"; return 0; fi
  exec {PERF_LOCK_FD}>&-; return 1
}

if [ "${PERF_PORT_LOCKED:-}" != "${PERF_PORT_BASE:-18080}$PERF_LOCK_SUFFIX" ] || [ "${PERF_PORT_BASE:-}" = auto ]; then
  if [ "${PERF_PORT_BASE:-}" = auto ]; then
    PERF_PORT_BASE=""
    for b in $(python3 "$PERF_PORTS_PY" auto); do
      perf_lock_base "$b" && { PERF_PORT_BASE=$b; break; }
    done
    [ -n "$PERF_PORT_BASE" ] || { echo "PERF_PORT_BASE=auto: no free base (see perf/ports.py AUTO_BASES)" >&2; exit 1; }
    echo "[perf] PERF_PORT_BASE=auto -> $PERF_PORT_BASE" >&2
  else
    PERF_PORT_BASE=${PERF_PORT_BASE:-18080}
    perf_lock_base "$PERF_PORT_BASE" || {
      echo "PERF_PORT_BASE=$PERF_PORT_BASE is in use by another perf run (pid $(cat "$PERF_LOCK_DIR/$PERF_PORT_BASE$PERF_LOCK_SUFFIX.pid" 2>/dev/null)," \
           "lock $PERF_LOCK_DIR/$PERF_PORT_BASE$PERF_LOCK_SUFFIX.lock); set PERF_PORT_BASE=auto or another base" >&2; exit 1; }
  fi
  export PERF_PORT_LOCKED=$PERF_PORT_BASE$PERF_LOCK_SUFFIX
fi
export PERF_PORT_BASE
eval "$(python3 "$PERF_PORTS_PY" shell | sed 's/^/export /')"

perf_render() {  # perf_render CONFIG: echo the path of CONFIG with this base's ports
  local src=$1 dir=${OUT_DIR:-$(dirname "$1")} dst
  dst=$dir/$(basename "${src%.yaml}")-$PERF_PORT_BASE.yaml
  mkdir -p "$dir"; python3 "$PERF_PORTS_PY" render "$src" "$dst" && echo "$dst"
}

perf_need_free() {  # perf_need_free PORT...: exit 1 naming any port something already listens on
  local busy
  busy=$(python3 "$PERF_PORTS_PY" free "$@") && return 0
  echo "port(s) $busy on 127.0.0.1 already in use (PERF_PORT_BASE=$PERF_PORT_BASE);" \
       "stop what listens there, or run with PERF_PORT_BASE=auto" >&2
  exit 1
}

perf_base_id() {  # perf_base_id N: N with the default base, N + (base - 18080) mod 65536 otherwise
  echo $(( $1 + (PERF_PORT_BASE - 18080 + 65536) % 65536 ))
}
