"""Writes tests/differential/cases/filter_jwt_authn_metadata.yaml: fresh keys, tokens signed with them by
tests/jwt_tokens.py, the bootstrap holding the public keys. Run from the repository root after
editing the requests: `.venv/bin/python -m tests.differential.generators.jwt_authn_metadata` (every key and
token in the file changes; the private keys are not kept)."""
# A script: everything below runs when it is run, nothing when it is not (no test imports it).
import json
import os
import sys

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases")

from tests.jwt_tokens import make_key, jwks
FAR = 4102444800
rs = make_key("RS256", "md")
def c(**kw):
    base = {"iss": "md-issuer", "sub": "alice", "aud": "api", "exp": FAR, "scope": "read  write admin", "n": 7, "ok": True}
    base.update(kw); return {k: v for k, v in base.items() if v is not None}
good = rs.sign(c()); expired = rs.sign(c(exp=1000000000)); other = rs.sign(c(sub="bob", scope="one"))
lua = r'''
function envoy_on_request(h)
  local md = h:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if md == nil then
    h:headers():add("x-md", "none")
    return
  end
  local p = md["my_payload"]
  local hd = md["my_header"]
  if p ~= nil then
    h:headers():add("x-md-sub", p["sub"])
    h:headers():add("x-md-iss", p["iss"])
    h:headers():add("x-md-n", tostring(p["n"]))
    h:headers():add("x-md-ok", tostring(p["ok"]))
    if type(p["scope"]) == "table" then
      h:headers():add("x-md-scope", table.concat(p["scope"], ","))
      h:headers():add("x-md-scope-count", tostring(#p["scope"]))
    else
      h:headers():add("x-md-scope", "string:" .. tostring(p["scope"]))
    end
  end
  if hd ~= nil then
    h:headers():add("x-md-alg", hd["alg"])
    h:headers():add("x-md-kid", hd["kid"])
  end
end
'''
out = f'''description: jwt_authn's payload_in_metadata (with normalize_payload_in_metadata splitting a space-delimited claim) and header_in_metadata, read by a Lua filter after it through streamInfo():dynamicMetadata(); allow_missing_or_failed passes requests whose token fails, with no metadata. Written by tests/differential/generators/jwt_authn_metadata.py, tokens signed by tests/jwt_tokens.py (exp 2100 or 2001).
upstreams: [service1]
stats:
- http.md.jwt_authn.allowed
- http.md.jwt_authn.denied
bootstrap:
  static_resources:
    listeners:
    - name: main
      address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{port:listener}}}}}}}}
      filter_chains:
      - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: md
            route_config:
              virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
                - match: {{prefix: "/"}}
                  route: {{cluster: service1}}
            http_filters:
            - name: envoy.filters.http.jwt_authn
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                providers:
                  md:
                    issuer: md-issuer
                    audiences: [api]
                    payload_in_metadata: my_payload
                    header_in_metadata: my_header
                    normalize_payload_in_metadata: {{space_delimited_claims: [scope, absent]}}
                    local_jwks: {{inline_string: {json.dumps(jwks(rs))}}}
                  plain:
                    issuer: plain-issuer
                    payload_in_metadata: my_payload
                    local_jwks: {{inline_string: {json.dumps(jwks(rs))}}}
                rules:
                - match: {{prefix: /failok}}
                  requires: {{allow_missing_or_failed: {{}}}}
                - match: {{prefix: /}}
                  requires: {{provider_name: md}}
            - name: envoy.filters.http.lua
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                default_source_code:
                  inline_string: {json.dumps(lua)}
            - name: envoy.filters.http.router
              typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
    clusters:
    - name: service1
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: service1
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{upstream:service1}}}}}}}}}}}}]}}]
requests:
- name: good_token_metadata
  path: /x
  headers: {{authorization: "Bearer {good}"}}
- name: failok_good_token_metadata
  path: /failok
  headers: {{authorization: "Bearer {other}"}}
- name: failok_expired_no_metadata
  path: /failok
  headers: {{authorization: "Bearer {expired}"}}
- name: failok_missing_no_metadata
  path: /failok
- name: refused_expired
  path: /x
  headers: {{authorization: "Bearer {expired}"}}
'''
open(CASES + "/filter_jwt_authn_metadata.yaml", "w").write(out)
