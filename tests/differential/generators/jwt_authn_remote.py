"""Writes tests/differential/cases/filter_jwt_authn_remote.yaml: fresh keys, tokens signed with them by
tests/jwt_tokens.py, the bootstrap holding the public keys. Run from the repository root after
editing the requests: `.venv/bin/python -m tests.differential.generators.jwt_authn_remote` (every key and
token in the file changes; the private keys are not kept)."""
# A script: everything below runs when it is run, nothing when it is not (no test imports it).
import json
import os
import sys

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases")

from tests.jwt_tokens import make_key, jwks, b64url
FAR = 4102444800
rs = make_key("RS256", "remote"); ec = make_key("ES384", "local")
def c(**kw):
    base = {"iss": "remote-issuer", "sub": "spiffe://good/svc", "aud": "api", "exp": FAR}
    base.update(kw); return {k: v for k, v in base.items() if v is not None}
T = {
 "remote": rs.sign(c()),
 "remote2": rs.sign(c(sub="spiffe://good/other")),
 "badsub": rs.sign(c(sub="spiffe://evil/svc")),
 "nosub": rs.sign(c(sub=None)),
 "life": rs.sign(c(iss="life-issuer")),
 "life_noexp": rs.sign(c(iss="life-issuer", exp=None)),
 "reqexp_noexp": rs.sign(c(iss="reqexp-issuer", exp=None)),
 "reqexp_ok": rs.sign(c(iss="reqexp-issuer")),
 "long": rs.sign(c(iss="long-issuer")),
 "bad": rs.sign(c(iss="bad-issuer")),
 "err": rs.sign(c(iss="err-issuer")),
 "down": rs.sign(c(iss="down-issuer")),
 "local": ec.sign(c(iss="local-issuer")),
 "local_expired": ec.sign(c(iss="local-issuer", exp=1000000000)),
 "local_aud": ec.sign(c(iss="local-issuer", aud="other")),
}
J = jwks(rs)
L = jwks(ec)
q = json.dumps
def provider(name, issuer, path, cluster="jwks", extra=""):
    return f"""                  {name}:
                    issuer: {issuer}
                    audiences: [api]
{extra}                    remote_jwks:
                      http_uri: {{uri: "http://jwks.local{path}", cluster: {cluster}, timeout: 1s}}
                      cache_duration: 300s
"""
providers = (provider("remote", "remote-issuer", "/keys", extra="                    subjects: {prefix: \"spiffe://good/\"}\n")
  + provider("life", "life-issuer", "/keys", extra="                    max_lifetime: 3600s\n")
  + provider("reqexp", "reqexp-issuer", "/keys", extra="                    require_expiration: true\n")
  + provider("long", "long-issuer", "/keys", extra="                    max_lifetime: 3153600000s\n")
  + provider("bad", "bad-issuer", "/bad") + provider("err", "err-issuer", "/err")
  + provider("down", "down-issuer", "/keys", cluster="down"))
names = ["remote", "life", "reqexp", "long", "bad", "err", "down"]
rules = "".join(f"""                - match: {{prefix: /{n}}}
                  requires: {{provider_name: {n}}}
""" for n in names)
def cluster(name, port):
    return f"""    - name: {name}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {name}
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"""
def hcm(listener, prefix, filt, routes='''                - match: {prefix: "/"}
                  route: {cluster: service1}
'''):
    return f"""    - name: {listener}
      address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{port:{listener}}}}}}}}}
      filter_chains:
      - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: {prefix}
            route_config:
              virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
{routes}            http_filters:
{filt}            - name: envoy.filters.http.router
              typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
main_filter = f"""            - name: envoy.filters.http.jwt_authn
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                providers:
{providers}                rules:
{rules}"""
strip_filter = f"""            - name: envoy.filters.http.jwt_authn
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                strip_failure_response: true
                stat_prefix: sp
                providers:
                  local:
                    issuer: local-issuer
                    audiences: [api]
                    local_jwks: {{inline_string: {q(L)}}}
                rules:
                - match: {{prefix: /}}
                  requires: {{provider_name: local}}
"""
jwks_routes = f"""                - match: {{path: "/keys"}}
                  direct_response: {{status: 200, body: {{inline_string: {q(J)}}}}}
                - match: {{path: "/bad"}}
                  direct_response: {{status: 200, body: {{inline_string: "not json"}}}}
                - match: {{path: "/err"}}
                  direct_response: {{status: 503, body: {{inline_string: "down"}}}}
"""
out = []
w = out.append
w("description: jwt_authn with remote JWKS — keys fetched from a cluster (here the proxy's own second listener answering with a direct response) and cached per worker for cache_duration (one fetch for several requests), a fetch answered with something not JSON, a 503 or no connection (\"Jwks remote fetch is failed\"), subjects, max_lifetime and require_expiration; a second filter with strip_failure_response and its own stat_prefix. Written by tests/differential/generators/jwt_authn_remote.py, tokens signed by tests/jwt_tokens.py (exp 2100 or 2001).")
w("upstreams: [service1]")
w("stats:")
for s in ["allowed", "denied", "jwks_fetch_success", "jwks_fetch_failed", "jwt_cache_miss", "jwt_cache_hit"]:
    w(f"- http.jwt.jwt_authn.{s}")
for s in ["allowed", "denied", "jwt_cache_miss"]:
    w(f"- http.strip.jwt_authn.sp.{s}")
w("bootstrap:\n  static_resources:\n    listeners:")
w(hcm("listener", "jwt", main_filter).rstrip("\n"))
w(hcm("jwks", "jwks", "", jwks_routes).rstrip("\n"))
w(hcm("strip", "strip", strip_filter).rstrip("\n"))
w("    clusters:")
w(cluster("service1", "{{upstream:service1}}").rstrip("\n"))
w(cluster("jwks", "{{port:jwks}}").rstrip("\n"))
w(cluster("down", "{{closed_port}}").rstrip("\n"))
w("requests:")
def req(name, path, tok=None, listener=None, headers=None):
    h = dict(headers or {})
    if tok: h["authorization"] = "Bearer " + T[tok]
    w(f"- name: {name}")
    if listener: w(f"  listener: {listener}")
    w(f"  path: {json.dumps(path)}")
    if h: w("  headers: " + json.dumps(h))
req("remote_fetched", "/remote/a", "remote")
req("remote_cached", "/remote/b", "remote2")
req("remote_subject_refused", "/remote/c", "badsub")
req("remote_no_subject_refused", "/remote/c", "nosub")
req("max_lifetime_exceeded", "/life", "life")
req("max_lifetime_no_exp", "/life", "life_noexp")
req("require_expiration_no_exp", "/reqexp", "reqexp_noexp")
req("require_expiration_ok", "/reqexp", "reqexp_ok")
req("long_max_lifetime_ok", "/long", "long")
req("jwks_not_json", "/bad", "bad")
req("jwks_503", "/err", "err")
req("jwks_unreachable", "/down", "down")
req("strip_missing", "/x", listener="strip")
req("strip_expired", "/x", "local_expired", listener="strip")
req("strip_wrong_aud", "/x", "local_aud", listener="strip")
req("strip_valid", "/x", "local", listener="strip")
open(CASES + "/filter_jwt_authn_remote.yaml", "w").write("\n".join(out) + "\n")
