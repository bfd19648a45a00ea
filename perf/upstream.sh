# perf/upstream.sh - sourced by profile.sh, bytecode_count.sh, instr_count.sh, ab.sh (not run alone).
# Starts the benchmark upstream: nginx on 127.0.0.1:$PERF_UPSTREAM_PORT (perf/ports.sh, which
# the caller sources first; 18080 by default) answering GET / with a 100 B body, in the
# foreground of its own session, pinned to the CPUs in $1 (e.g. 1, or "" for any).
# Needs OUT_DIR (config, pid and logs go there) and the PGS array (its process group is added,
# for the caller's cleanup trap).
start_upstream() {
  local cpus=$1 body
  body=$(printf '%0100d' 0)
  mkdir -p "$OUT_DIR/tmp"; chmod 755 "$OUT_DIR"
  cat > "$OUT_DIR/upstream.conf" <<EOC
worker_processes 1; pid $OUT_DIR/upstream.pid; error_log $OUT_DIR/upstream.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $OUT_DIR/tmp/b;
  proxy_temp_path $OUT_DIR/tmp/p; fastcgi_temp_path $OUT_DIR/tmp/f; uwsgi_temp_path $OUT_DIR/tmp/u;
  scgi_temp_path $OUT_DIR/tmp/s;
  server { listen 127.0.0.1:$PERF_UPSTREAM_PORT; location = / { default_type text/plain; return 200 "$body"; } } }
EOC
  setsid ${cpus:+taskset -c "$cpus"} nginx -p "$OUT_DIR/" -e "$OUT_DIR/upstream.err" \
    -c "$OUT_DIR/upstream.conf" -g 'daemon off;' >"$OUT_DIR/upstream.log" 2>&1 </dev/null &
  PGS+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PERF_UPSTREAM_PORT/" && return; sleep 0.1; done
  echo "upstream nginx on $PERF_UPSTREAM_PORT did not start; see $OUT_DIR/upstream.err" >&2; exit 1
}
