"""Writes tests/differential/cases/filter_jwt_authn_failed_status.yaml: fresh keys, tokens signed with them by
tests/jwt_tokens.py, the bootstrap holding the public keys. Run from the repository root after
editing the requests: `.venv/bin/python -m tests.differential.generators.jwt_authn_failed_status` (every key and
token in the file changes; the private keys are not kept)."""
# A script: everything below runs when it is run, nothing when it is not (no test imports it).
import json
import os
import sys

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases")

from tests.jwt_tokens import make_key, jwks
rs = make_key("RS256", "f")
def c(**kw):
    base = {"iss": "f-issuer", "sub": "alice", "aud": "api", "exp": 4102444800}
    base.update(kw); return {k: v for k, v in base.items() if v is not None}
T = {"good": rs.sign(c()), "expired": rs.sign(c(exp=1000000000)), "aud": rs.sign(c(aud="x")),
     "badsig": rs.sign(c())[:-4] + "AAAA", "kid": rs.sign(c(), {"kid": "zz"}), "iss": rs.sign(c(iss="other"))}
lua = r'''
function envoy_on_request(h)
  local md = h:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if md == nil then h:headers():add("x-fail", "none") return end
  local f = md["fail"]
  if f == nil then h:headers():add("x-fail", "no-entry") return end
  h:headers():add("x-fail", f["code"] .. "|" .. f["message"])
end
'''
def filt(n, providers_extra=""):
    return f'''            - name: envoy.filters.http.jwt_authn
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                providers:
                  p:
                    issuer: f-issuer
                    audiences: [api]
                    failed_status_in_metadata: fail
                    local_jwks: {{inline_string: {json.dumps(jwks(rs))}}}
{providers_extra}                rules:
                - match: {{prefix: /failok}}
                  requires: {{allow_missing_or_failed: {{}}}}
                - match: {{prefix: /any}}
                  requires: {{requires_any: {{requirements: [{{provider_name: p}}, {{allow_missing_or_failed: {{}}}}]}}}}
'''
def listener(name, prefix, flt):
    return f'''    - name: {name}
      address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{port:{name}}}}}}}}}
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
                - match: {{prefix: "/"}}
                  route: {{cluster: service1}}
            http_filters:
{flt}            - name: envoy.filters.http.lua
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                default_source_code:
                  inline_string: {json.dumps(lua)}
            - name: envoy.filters.http.router
              typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
'''
two = f'''                  q:
                    issuer: q-issuer
                    local_jwks: {{inline_string: {json.dumps(jwks(rs))}}}
'''
out = f'''description: jwt_authn's failed_status_in_metadata — a failure's jwt_verify_lib status number and message in dynamic metadata, read by a Lua filter after it on routes that let failures through (allow_missing_or_failed alone and inside requires_any); with two providers allow_missing_or_failed has no provider to write it. Written by tests/differential/generators/jwt_authn_failed_status.py, tokens signed by tests/jwt_tokens.py.
upstreams: [service1]
bootstrap:
  static_resources:
    listeners:
{listener("listener", "one", filt("one"))}{listener("two", "two", filt("two", two))}    clusters:
    - name: service1
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: service1
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{upstream:service1}}}}}}}}}}}}]}}]
requests:
'''
reqs = []
for lst in ("listener", "two"):
    for route in ("failok", "any"):
        for name in ("good", "expired", "aud", "badsig", "kid", "iss", None):
            reqs.append(f'''- name: {lst}_{route}_{name or "missing"}
  listener: {lst}
  path: /{route}
''' + (f'''  headers: {{authorization: "Bearer {T[name]}"}}
''' if name else ""))
open(CASES + "/filter_jwt_authn_failed_status.yaml", "w").write(out + "".join(reqs))
