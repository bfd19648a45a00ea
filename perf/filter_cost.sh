#!/usr/bin/env bash
# perf/filter_cost.sh - what each built-in HTTP filter, configured alone before the router,
# costs an HTTP/1.1 keep-alive request, against the router alone measured in the same run
# (issue 17's budget: <= 10 % per configured filter). For each config of perf/configs/ below:
# bytecodes per request (perf/bytecode_count.sh, deterministic) and, with INSTR=1 (default),
# machine instructions of the worker per request (perf/instr_count.sh, callgrind). One
# connection (WRK_C=1) throughout: ext_authz's check call outlives its timeout at -c20 under
# callgrind, and -c1 keeps every config's event-loop batching alike. A config whose requests
# carry a header (RBAC's x-api-key, jwt's token, the compressor's accept-encoding) is also
# compared with the router alone given the same header: the header's own cost in the codec
# is not the filter's.
#   perf/filter_cost.sh                  # INSTR=1 SECS=6 -> $OUT (/tmp/ftproxy-filter-cost)/table.md
#   INSTR=0 perf/filter_cost.sh          # bytecodes only (~3 min)
#   ONLY="fault rbac" perf/filter_cost.sh
# Loopback only; each run takes a free port base (PERF_PORT_BASE=auto).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
export PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-/tmp/ftproxy-filter-cost}; INSTR=${INSTR:-1}; SECS=${SECS:-6}
mkdir -p "$OUT"
JWT="authorization: Bearer $(sed -n 's/.*RS256: WRK_HEADER="authorization: Bearer \([^"]*\)".*/\1/p' "$HERE/configs/http-jwt-cached.yaml")"
# name | config | request header ("" for none)
ROWS=(
  "router|http.yaml|"
  "router+apikey|http.yaml|x-api-key: demo-key"
  "router+jwt|http.yaml|$JWT"
  "router+gzip|http.yaml|accept-encoding: gzip"
  "fault|http-fault.yaml|"
  "cors|http-cors.yaml|"
  "csrf|http-csrf.yaml|"
  "rbac|http-rbac-apikey.yaml|x-api-key: demo-key"
  "local_ratelimit|http-local-ratelimit.yaml|"
  "ratelimit|http-ratelimit-nodesc.yaml|"
  "health_check|http-health-check.yaml|"
  "grpc_stats|http-grpc-stats.yaml|"
  "compressor|http-compressor.yaml|accept-encoding: gzip"
  "decompressor|http-decompressor.yaml|"
  "lua|http-lua.yaml|"
  "jwt_authn|http-jwt-cached.yaml|$JWT"
  "ext_authz|http-ext-authz-http.yaml|"
  "buffer|http-buffer.yaml|"
  "router+headers|http-route-headers.yaml|"
  "header_mutation|http-header-mutation.yaml|"
  "set_metadata|http-set-metadata.yaml|"
)
for row in "${ROWS[@]}"; do
  IFS='|' read -r name cfg header <<<"$row"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && [[ $name != router* ]]; then continue; fi
  echo "[filter_cost] $name ($cfg${header:+, $(cut -c1-30 <<<"$header")})" >&2
  PERF_PORT_BASE=auto WRK_C=1 TOP=0 WRK_HEADER="$header" CONFIG="$HERE/configs/$cfg" \
    "$HERE/bytecode_count.sh" >"$OUT/$name.bc" 2>"$OUT/$name.bc.err" || echo "  bytecode_count failed: $OUT/$name.bc.err" >&2
  if [ "$INSTR" = 1 ]; then
    PERF_PORT_BASE=auto WRK_C=1 TOP=0 SECS="$SECS" WRK_HEADER="$header" CONFIG="$HERE/configs/$cfg" \
      "$HERE/instr_count.sh" >"$OUT/$name.instr" 2>"$OUT/$name.instr.err" || echo "  instr_count failed: $OUT/$name.instr.err" >&2
  fi
done
"$PY" - "$OUT" "${ROWS[@]}" <<'PY'
import re, sys
out, rows = sys.argv[1], [r.split("|") for r in sys.argv[2:]]
def read(name, ext):
    try:
        m = re.search(r"requests (\d+)\s+\w+ per request (\d+)", open(f"{out}/{name}.{ext}").read())
    except OSError:
        return None
    return (int(m.group(2)), int(m.group(1))) if m else None
base = {"": "router", "x-api-key": "router+apikey", "authorization": "router+jwt",
        "accept-encoding": "router+gzip"}
def pct(v, b):
    return "—" if v is None or b is None else f"{100 * (v[0] - b[0]) / b[0]:+.1f} %"
print("| filter (config) | bytecodes / req | vs. router alone | vs. router alone, same header "
      "| instructions / req (requests) | vs. router alone | vs. router alone, same header |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, cfg, header in rows:
    bc, ins = read(name, "bc"), read(name, "instr")
    same = base[header.split(":")[0]]
    sbc, sins = read(same, "bc"), read(same, "instr")
    label = f"{name} (`{cfg}`" + (f", `{header.split(':')[0]}` sent)" if header else ")")
    print(f"| {label} | {f'{bc[0]:,}' if bc else '—'} | {pct(bc, read('router', 'bc'))} | "
          f"{pct(bc, sbc) if header else '—'} | "
          + (f"{ins[0] / 1000:.1f}k ({ins[1]})" if ins else "—")
          + f" | {pct(ins, read('router', 'instr'))} | {pct(ins, sins) if header else '—'} |")
PY
