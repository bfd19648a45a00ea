"""Certificates and configs for perf/tls.sh: TLS termination by HAProxy, nginx, Envoy and
ftproxy in front of a plain-HTTP nginx upstream, and nginx serving TLS itself ("direct").

Job: write into WORK (a fresh /tmp dir made by tls.sh) an ECDSA P-256 and an RSA 2048
self-signed certificate (CN/SAN localhost and 127.0.0.1, SHA-256, Python `cryptography`),
the payloads (100 B body on `/`, BULK_MB MiB of random bytes on `/big.bin`), the configs of
every system, a client OpenSSL config, and `ports.tsv` (system, ecdsa port, rsa port, plain
port, admin port or -). The ports are PERF_PORT_BASE's (perf/ports.py): 18480-18496 by default.

Every TLS listener has session resumption off (no tickets, no session cache): the handshake
case must do a full handshake per connection, and the keep-alive and bulk cases use the same
listeners (one handshake per connection there, which does not matter). TLS 1.2 and 1.3 are
allowed; what is negotiated is probed by tls.sh and printed with the results.
Loopback only. Benchmark tool, not imported by the proxy.

    .venv/bin/python perf/tls_configs.py WORK --bulk-mb 200 [--client-ciphers TLS_AES_128_GCM_SHA256]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ports import TLS_OFFSETS, plan  # perf/ports.py (perf/ is on sys.path: run as a script)

_PLAN = plan()
_TLS = _PLAN["tls"]
UP = _TLS + TLS_OFFSETS["upstream"]  # upstream nginx, plain HTTP/1.1 (what every proxy forwards to)
# system -> (ECDSA port, RSA port, plain HTTP port): the TLS listeners, and a plain one for the
# reference case ka-plain (what TLS adds to each system's keep-alive cost); "direct" is the
# upstream nginx itself. 18481/18482/18480, 18483/18484/18493, ... with the default base.
PORTS = {s: tuple(_TLS + o for o in TLS_OFFSETS[s]) for s in ("direct", "haproxy", "nginx", "envoy", "ftproxy")}
ENVOY_ADMIN, FTPROXY_ADMIN = _TLS + TLS_OFFSETS["envoy_admin"], _TLS + TLS_OFFSETS["ftproxy_admin"]
BODY = "0" * 100               # the 100-byte body of peers.sh


def make_cert(kind: str) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 key PEM), self-signed, valid for two days."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def ngx_tls(w: Path, kind: str) -> str:
    return (f"ssl_certificate {w}/{kind}.crt; ssl_certificate_key {w}/{kind}.key; "
            "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;")


def write(work: Path, bulk_mb: int, client_ciphers: str) -> None:
    w = work
    (w / "www").mkdir(exist_ok=True)
    (w / "tmp").mkdir(exist_ok=True)
    os.chmod(w, 0o755)  # nginx workers must read it
    for kind in ("ecdsa", "rsa"):
        crt, key = make_cert(kind)
        (w / f"{kind}.crt").write_bytes(crt)
        (w / f"{kind}.key").write_bytes(key)
        (w / f"{kind}.pem").write_bytes(crt + key)  # HAProxy: certificate and key in one file
        for suffix in ("key", "pem"):
            os.chmod(w / f"{kind}.{suffix}", 0o644)  # nginx workers, not only the master
    with open(w / "www" / "big.bin", "wb") as f:
        for _ in range(bulk_mb):
            f.write(os.urandom(1 << 20))

    common = (f"access_log off; keepalive_requests 1000000; keepalive_timeout 300s; "
              f"client_body_temp_path {w}/tmp/b; proxy_temp_path {w}/tmp/p; "
              f"fastcgi_temp_path {w}/tmp/f; uwsgi_temp_path {w}/tmp/u; scgi_temp_path {w}/tmp/s;")
    e, r, _ = PORTS["direct"]
    (w / "upstream.conf").write_text(f"""
worker_processes 1; pid {w}/upstream.pid; error_log {w}/upstream.err warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{ {common} sendfile on;
  server {{ listen 127.0.0.1:{UP} backlog=4096;
    location = / {{ default_type text/plain; return 200 "{BODY}"; }}
    location / {{ root {w}/www; }} }}
  server {{ listen 127.0.0.1:{e} ssl backlog=4096; {ngx_tls(w, "ecdsa")}
    location = / {{ default_type text/plain; return 200 "{BODY}"; }}
    location / {{ root {w}/www; }} }}
  server {{ listen 127.0.0.1:{r} ssl backlog=4096; {ngx_tls(w, "rsa")}
    location = / {{ default_type text/plain; return 200 "{BODY}"; }}
    location / {{ root {w}/www; }} }} }}
""")
    e, r, plain = PORTS["nginx"]
    loc = ('location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; '
           'proxy_max_temp_file_size 0; }')
    (w / "nginx-proxy.conf").write_text(f"""
worker_processes 1; pid {w}/nginx-proxy.pid; error_log {w}/nginx-proxy.err warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{ {common}
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{e} ssl backlog=4096; {ngx_tls(w, "ecdsa")} {loc} }}
  server {{ listen 127.0.0.1:{r} ssl backlog=4096; {ngx_tls(w, "rsa")} {loc} }}
  server {{ listen 127.0.0.1:{plain} backlog=4096; {loc} }} }}
""")
    e, r, plain = PORTS["haproxy"]
    (w / "haproxy.cfg").write_text(f"""
global
    nbthread 1
    maxconn 8000
    tune.ssl.cachesize 0
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend tls_ecdsa
    bind 127.0.0.1:{e} ssl crt {w}/ecdsa.pem ssl-min-ver TLSv1.2 no-tls-tickets
    default_backend up
frontend tls_rsa
    bind 127.0.0.1:{r} ssl crt {w}/rsa.pem ssl-min-ver TLSv1.2 no-tls-tickets
    default_backend up
frontend plain
    bind 127.0.0.1:{plain}
    default_backend up
backend up
    server s1 127.0.0.1:{UP}
""")
    for system, admin in (("envoy", ENVOY_ADMIN), ("ftproxy", FTPROXY_ADMIN)):
        (w / f"{system}.yaml").write_text(envoy_bootstrap(w, system, admin))
    # perf/configs/http.yaml's layout with TLS (ECDSA) on 127.0.0.1:18090 -> 18080, admin 19901
    # (PERF_PORT_BASE's proxy, upstream and admin ports): for CONFIG=... URL=https://127.0.0.1:18090/
    # perf/instr_count.sh (or bytecode_count.sh), which read the requests served from the admin
    (w / f"ftproxy-{_PLAN['proxy']}.yaml").write_text(
        envoy_bootstrap(w, "ftproxy", _PLAN["admin"], (_PLAN["proxy"],), _PLAN["upstream"]))
    # Every client (wrk, curl, openssl s_client) reads this through OPENSSL_CONF: it offers
    # one TLS 1.3 suite, so that every server negotiates the same one (BoringSSL in Envoy
    # prefers AES-128-GCM, OpenSSL servers AES-256-GCM; TLS 1.3 suites are not configurable
    # in Envoy's or ftproxy's config).
    (w / "client-openssl.cnf").write_text(
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n[ssl_sect]\n"
        "system_default = system_default_sect\n[system_default_sect]\n"
        + (f"Ciphersuites = {client_ciphers}\n" if client_ciphers else ""))
    (w / "report.lua").write_text("""
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT\\t%d\\t%d\\t%d\\t%d\\t%d\\t%d\\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
""")
    admins = {"envoy": ENVOY_ADMIN, "ftproxy": FTPROXY_ADMIN}
    (w / "ports.tsv").write_text("".join(f"{s}\t{p[0]}\t{p[1]}\t{p[2]}\t{admins.get(s, '-')}\n"
                                         for s, p in PORTS.items()))


def hcm(prefix: str) -> str:
    return f"""
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: up, timeout: 0s }} }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"""


def envoy_bootstrap(w: Path, system: str, admin: int | None, ports: tuple[int, ...] = (),
                    upstream: int = UP) -> str:
    """The same bootstrap for Envoy and ftproxy: two TLS listeners (ECDSA, RSA) and a plain
    one -> HCM (no access log) -> route "/" -> STATIC cluster, the plain upstream."""
    listeners = []
    for kind, port in zip(("ecdsa", "rsa", "plain"), ports or PORTS[system]):
        if kind == "plain":
            listeners.append(f"""
  - name: plain
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:{hcm("plain")}""")
            continue
        listeners.append(f"""
  - name: tls_{kind}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          disable_stateless_session_resumption: true
          disable_stateful_session_resumption: true
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}
            tls_certificates:
            - certificate_chain: {{ filename: {w}/{kind}.crt }}
              private_key: {{ filename: {w}/{kind}.key }}
      filters:{hcm("tls_" + kind)}""")
    admin_line = f"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n" if admin else ""
    return f"""# perf/tls.sh: {system}, TLS termination in front of the plain nginx upstream. Loopback only.
{admin_line}static_resources:
  listeners:{"".join(listeners)}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {{ thresholds: [{{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}] }}
    load_assignment:
      cluster_name: up
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--bulk-mb", type=int, default=200)
    ap.add_argument("--client-ciphers", default="TLS_AES_128_GCM_SHA256")
    a = ap.parse_args()
    write(a.work, a.bulk_mb, a.client_ciphers)


if __name__ == "__main__":
    main()
