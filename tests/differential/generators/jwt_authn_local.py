"""Writes tests/differential/cases/filter_jwt_authn.yaml: fresh keys, tokens signed with them by
tests/jwt_tokens.py, the bootstrap holding the public keys. Run from the repository root after
editing the requests: `.venv/bin/python -m tests.differential.generators.jwt_authn_local` (every key and
token in the file changes; the private keys are not kept)."""
# A script: everything below runs when it is run, nothing when it is not (no test imports it).
import json
import os
import sys

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases")

from tests.jwt_tokens import make_key, jwks, b64url
FAR = 4102444800
rs = make_key("RS256", "rs256"); ps = make_key("PS384", "ps384"); es = make_key("ES256", "es256")
es5 = make_key("ES512", "es512"); ed = make_key("EdDSA", "ed"); hs = make_key("HS256", "hs")
other = make_key("RS256", "other")
ISS = "https://issuer.example"
def c(**kw):
    base = {"iss": ISS, "sub": "alice", "aud": "api.example", "exp": FAR}
    base.update(kw); return {k: v for k, v in base.items() if v is not None}
T = {}
T["rs"] = rs.sign(c(nested={"team": "blue", "level": 3}, admin=True, ratio=1.5))
T["ps"] = ps.sign(c())
T["es"] = es.sign(c())
T["es512"] = es5.sign(c())
T["ed"] = ed.sign(c())
T["hs"] = hs.sign(c())
T["expired"] = rs.sign(c(exp=1000000000))
T["notyet"] = rs.sign(c(nbf=FAR - 10))
T["wrongaud"] = rs.sign(c(aud=["x.example", "y.example"]))
T["audscheme"] = rs.sign(c(aud="https://api.example/"))
T["wrongiss"] = rs.sign(c(iss="https://evil.example"))
T["badsig"] = T["rs"][:-6] + ("AAAAAA" if not T["rs"].endswith("AAAAAA") else "BBBBBB")
T["unknownkid"] = rs.sign(c(), {"kid": "nope"})
T["nokid"] = rs.sign(c(), {"kid": None})
T["other"] = other.sign(c(iss="other-issuer", aud=None))
T["expstr"] = rs.sign(c(exp="tomorrow"))
T["audnum"] = rs.sign(c(aud=5))
hdr = b64url(json.dumps({"alg": "none"}).encode())
T["algnone"] = hdr + "." + T["rs"].split(".")[1] + ".c2ln"
T["badjson"] = b64url(b"{not json") + "." + T["rs"].split(".")[1] + "." + T["rs"].split(".")[2]
T["noiss"] = rs.sign(c(iss=None))
d = {"tokens": T, "jwks": json.loads(jwks(rs, ps, es, es5, ed, hs)), "other_jwks": json.loads(jwks(other))}

T = d["tokens"]
J = json.dumps(d["jwks"]); O = json.dumps(d["other_jwks"])
def q(s): return json.dumps(s)
out = []
w = out.append
w("description: the JWT authentication filter — tokens signed with RS256, PS384, ES256, ES512, EdDSA and HS256 keys checked against a local JWKS; expired, not yet valid, wrong audience (403), unknown issuer, malformed, bad signature, unknown kid and missing tokens answered with Envoy's bodies and www-authenticate; rules with requires_any / requires_all / allow_missing / allow_missing_or_failed / provider_and_audiences, per-route requirement_name and disabled, CORS preflight bypass, forwarded payload and claim headers, tokens from a custom header, a query parameter and a cookie; stats. Written by tests/differential/generators/jwt_authn_local.py, tokens signed by tests/jwt_tokens.py (exp 2100, or 2001 for the expired one).")
w("upstreams: [service1]")
w("stats:")
for s in ["allowed", "denied", "cors_preflight_bypassed", "jwks_fetch_success", "jwks_fetch_failed", "jwt_cache_miss", "jwt_cache_hit"]:
    w(f"- http.jwt.jwt_authn.{s}")
w("expected_differences:")
w("- request: param_removed_decoded_space")
w('  key: "*"')
w("  reason: Envoy writes the query back decoded after removing the token's parameter, a space included, so its upstream gets an invalid request line and answers 400 (the echo upstream's HTML page); ftproxy percent-encodes what cannot stand in a request target (space, controls, '#', non-ASCII) and the request goes through")
w("bootstrap:")
w("""  static_resources:
    listeners:
    - name: main
      address: {socket_address: {address: 127.0.0.1, port_value: {{port:listener}}}}
      filter_chains:
      - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: jwt
            route_config:
              virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
                - match: {prefix: "/per-route"}
                  route: {cluster: service1}
                  typed_per_filter_config:
                    envoy.filters.http.jwt_authn:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                      requirement_name: other-only
                - match: {prefix: "/disabled"}
                  route: {cluster: service1}
                  typed_per_filter_config:
                    envoy.filters.http.jwt_authn:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                      disabled: true
                - match: {prefix: "/wrong-name"}
                  route: {cluster: service1}
                  typed_per_filter_config:
                    envoy.filters.http.jwt_authn:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                      requirement_name: nope
                - match: {prefix: "/"}
                  route: {cluster: service1}
            http_filters:
            - name: envoy.filters.http.jwt_authn
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                bypass_cors_preflight: true
                providers:
                  main:
                    issuer: https://issuer.example
                    audiences: [api.example, "http://second.example/"]
                    forward_payload_header: x-jwt-payload
                    claim_to_headers:
                    - {header_name: x-jwt-sub, claim_name: sub}
                    - {header_name: x-jwt-team, claim_name: nested.team}
                    - {header_name: x-jwt-level, claim_name: nested.level}
                    - {header_name: x-jwt-admin, claim_name: admin}
                    - {header_name: x-jwt-ratio, claim_name: ratio}
                    - {header_name: x-jwt-missing, claim_name: nothing.here}
                    - {header_name: x-jwt-path-team, claim_path: [{key: nested}, {key: team}]}
                    - {header_name: x-jwt-path-dotted, claim_path: [{key: nested.team}]}
                    local_jwks:
                      inline_string: %s
                  other:
                    issuer: other-issuer
                    forward: true
                    from_headers:
                    - {name: x-token, value_prefix: "Token "}
                    from_params: [jwt]
                    pad_forward_payload_header: true
                    forward_payload_header: x-other-payload
                    local_jwks:
                      inline_string: %s
                  cached:
                    audiences: [api.example]
                    jwt_cache_config: {jwt_cache_size: 2}
                    claim_to_headers:
                    - {header_name: x-cached-sub, claim_name: sub}
                    local_jwks:
                      inline_string: %s
                  cookie:
                    from_cookies: [session]
                    local_jwks:
                      inline_string: %s
                requirement_map:
                  other-only: {provider_name: other}
                rules:
                - match: {prefix: /public}
                - match: {prefix: /any}
                  requires:
                    requires_any:
                      requirements: [{provider_name: main}, {provider_name: other}]
                - match: {prefix: /all}
                  requires:
                    requires_all:
                      requirements: [{provider_name: main}, {provider_name: other}]
                - match: {prefix: /optional}
                  requires:
                    requires_any:
                      requirements: [{provider_name: main}, {allow_missing: {}}]
                - match: {prefix: /failok}
                  requires: {allow_missing_or_failed: {}}
                - match: {prefix: /missingok}
                  requires: {allow_missing: {}}
                - match: {prefix: /aud}
                  requires:
                    provider_and_audiences: {provider_name: main, audiences: [y.example]}
                - match: {prefix: /cookie}
                  requires: {provider_name: cookie}
                - match: {prefix: /cached}
                  requires: {provider_name: cached}
                - match: {prefix: /by-name}
                  requirement_name: other-only
                - match: {prefix: /}
                  requires: {provider_name: main}
            - name: envoy.filters.http.router
              typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    clusters:
    - name: service1
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: service1
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{upstream:service1}}}}}}]}]""" % (q(J), q(O), q(J), q(J)))
w("requests:")
def req(name, path="/x", headers=None, method=None, tok=None):
    h = dict(headers or {})
    if tok is not None:
        h["authorization"] = "Bearer " + T[tok]
    w(f"- name: {name}")
    if method: w(f"  method: {method}")
    w(f"  path: {q(path)}")
    if h:
        w("  headers: " + json.dumps(h))
for t in ["rs", "ps", "es", "es512", "ed", "hs", "nokid", "audscheme"]:
    req(f"valid_{t}", tok=t)
for t in ["expired", "notyet", "wrongaud", "wrongiss", "badsig", "unknownkid", "expstr", "audnum", "algnone", "badjson", "noiss"]:
    req(f"refused_{t}", tok=t)
req("missing")
req("malformed_one_dot", headers={"authorization": "Bearer abc.def"})
req("malformed_garbage", headers={"authorization": "Bearer !!!"})
req("bearer_lowercase_is_missing", headers={"authorization": "bearer " + T["rs"]})
req("prefix_inside_value", headers={"authorization": "xx Bearer   " + T["rs"]})
req("token_in_access_token_param", path="/x?a=1&access_token=" + T["rs"] + "&b=2")
req("two_tokens_one_bad", path="/x?access_token=" + T["expired"], tok="rs")
req("public_no_token", path="/public/x")
req("public_bad_token_passes", path="/public/x", tok="badsig")
req("any_main", path="/any", tok="rs")
req("any_other_header", path="/any", headers={"x-token": "Token " + T["other"]})
req("any_none", path="/any")
req("any_expired", path="/any", tok="expired")
req("all_both", path="/all", tok="rs", headers={"x-token": "Token " + T["other"]})
req("all_one", path="/all", tok="rs")
req("optional_missing", path="/optional")
req("optional_bad", path="/optional", tok="expired")
req("optional_good", path="/optional", tok="es")
req("failok_bad", path="/failok", tok="badsig")
req("failok_good", path="/failok", tok="ed")
req("missingok_missing", path="/missingok")
req("missingok_bad", path="/missingok", tok="expired")
req("missingok_other_param", path="/missingok?jwt=" + T["other"])
req("missingok_bad_header_good_param", path="/missingok?access_token=" + T["rs"], tok="expired")
req("missingok_good_header_bad_param", path="/missingok?access_token=" + T["expired"], tok="rs")
req("failok_two_tokens", path="/failok?access_token=" + T["badsig"], tok="es")
req("aud_override_ok", path="/aud", tok="wrongaud")
req("aud_override_refused", path="/aud", tok="rs")
req("cookie_ok", path="/cookie", headers={"cookie": "a=b; session=" + T["rs"] + "; c=d"})
req("cookie_missing", path="/cookie", headers={"cookie": "a=b"})
req("by_name_other_param", path="/by-name?x=1&jwt=" + T["other"])
req("per_route_requirement", path="/per-route", headers={"x-token": "Token " + T["other"]})
req("per_route_requirement_missing", path="/per-route", tok="rs")
req("disabled_route", path="/disabled")
req("wrong_requirement_name", path="/wrong-name")
req("cors_preflight_bypassed", method="OPTIONS", headers={"origin": "http://a.example", "access-control-request-method": "GET"})
req("options_without_preflight_headers", method="OPTIONS")
req("client_payload_header_replaced", tok="rs", headers={"x-jwt-payload": "forged", "x-jwt-sub": "mallory"})
req("client_payload_header_removed_on_public", path="/public", headers={"x-jwt-payload": "forged"})
req("forwarded_proto_in_realm", headers={"x-forwarded-proto": "https", "host": "api.example:8443"})
for i, t in enumerate(["rs", "rs", "es", "rs", "ed", "rs", "es", "badsig", "badsig", "wrongaud", "wrongaud"]):
    req(f"cached_{i}_{t}", path=f"/cached/{i}", tok=t)
req("param_removed_others_kept", path="/x?z=%41b&access_token=" + T["rs"] + "&c=d+e&f&b=1&a=x=y&b=2&=v&k=")
req("param_removed_decoded_space", path="/x?a=%20b&access_token=" + T["rs"])
req("param_twice_first_used", path="/x?access_token=" + T["rs"] + "&access_token=zzz")
req("param_only_one", path="/x?access_token=" + T["rs"])
req("param_with_fragment_chars", path="/x?access_token=" + T["rs"] + "&q=%2Fa%3Fb")
req("long_path_realm", path="/" + "p" * 300 + "?q=1")
open(CASES + "/filter_jwt_authn.yaml", "w").write("\n".join(out) + "\n")
out2 = open(CASES + "/filter_jwt_authn.yaml").read()
extra = []
def req2(name, path="/x", headers=None, method=None):
    extra.append(f"- name: {name}")
    if method: extra.append(f"  method: {method}")
    extra.append(f"  path: {q(path)}")
    if headers: extra.append("  headers: " + json.dumps(headers))
req2("client_payload_header_on_disabled_route", path="/disabled", headers={"x-jwt-payload": "forged", "x-other-payload": "f2", "x-jwt-sub": "m"})
req2("client_payload_header_on_preflight", method="OPTIONS", headers={"origin": "http://a.example", "access-control-request-method": "GET", "x-jwt-payload": "forged"})
req2("client_other_payload_header_on_main_route", headers={"authorization": "Bearer " + T["rs"], "x-other-payload": "forged"})
open(CASES + "/filter_jwt_authn.yaml", "w").write(out2 + "\n".join(extra) + "\n")
