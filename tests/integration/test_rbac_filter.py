"""The RBAC HTTP filter through the running proxy: policies over the path, headers, addresses
and (over mTLS) the client certificate's identity; what it refuses at load. Its agreement with
real Envoy on the same policies is tests/differential/cases/filter_rbac.yaml."""

from __future__ import annotations

import json
import subprocess

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.tls_certs import CertAuthority

from .harness import ProxyUnderTest, front_proxy_config, static_cluster
from .tls_config import downstream_tls, with_listener_tls

RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _config(upstream, rbac: dict, **hcm) -> dict:
    return front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}],
                              [static_cluster("c1", upstream.port)],
                              http_filters=[{"name": "envoy.filters.http.rbac",
                                             "typed_config": {"@type": RBAC_URL, **rbac}}, ROUTER], **hcm)


def _curl(port: int, path: str, *args: str) -> tuple[int, str]:
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", *args,
                        "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}{path}"],
                       capture_output=True, text=True, timeout=15)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_an_mtls_identity_is_a_principal(upstream, tmp_path):
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", ["localhost"])
    cafile = ca.pem_file(tmp_path)
    alice = ca.issue_files(tmp_path, "alice", [], cn="alice", client=True, uris=["spiffe://test/alice"])
    bob = ca.issue_files(tmp_path, "bob", [], cn="bob", client=True, uris=["spiffe://test/bob"])
    rbac = {"rules": {"action": "ALLOW", "policies": {
        "alice-writes": {"permissions": [{"header": {"name": ":method", "string_match": {"exact": "POST"}}}],
                         "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://test/alice"}}}]},
        "anyone-tls-reads": {"permissions": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}],
                             "principals": [{"authenticated": {}}]}}}}
    cfg = with_listener_tls(_config(upstream, rbac), downstream_tls(
        (cert, key), common={"validation_context": {"trusted_ca": {"filename": str(cafile)}}}))
    p = ProxyUnderTest(cfg)
    try:
        as_alice = ("--cacert", str(cafile), "--cert", str(alice[0]), "--key", str(alice[1]))
        as_bob = ("--cacert", str(cafile), "--cert", str(bob[0]), "--key", str(bob[1]))
        code, body = _curl(p.port, "/w", *as_alice, "-d", "x")
        assert code == 200 and json.loads(body)["method"] == "POST"
        assert _curl(p.port, "/w", *as_bob, "-d", "x") == (403, "RBAC: access denied")
        assert _curl(p.port, "/r", *as_bob)[0] == 200            # any TLS client may read
        assert _curl(p.port, "/r", "--cacert", str(cafile))[0] == 200  # (no certificate: TLS still)
        c = p.counters()
        assert (c["http.ingress_http.rbac.allowed"], c["http.ingress_http.rbac.denied"]) == (3, 1)
        assert [r[0] for r in upstream.requests] == ["POST", "GET", "GET"]
    finally:
        p.stop()


def test_plaintext_is_never_authenticated(upstream, proxy_factory):
    rbac = {"rules": {"action": "ALLOW", "policies": {"tls-only": {
        "permissions": [{"any": True}], "principals": [{"authenticated": {}}]}}}}
    p = proxy_factory(_config(upstream, rbac))
    import urllib.request
    try:
        urllib.request.urlopen(p.url("/x"), timeout=5)
        raise AssertionError("served")
    except urllib.error.HTTPError as e:
        assert e.code == 403 and e.read() == b"RBAC: access denied"
    assert upstream.requests == []


@pytest.mark.parametrize("rbac,where", [
    ({"rules": {"policies": {"p": {"permissions": [{"metadata": {}}], "principals": [{"any": True}]}}}},
     'rules.policies["p"].permissions[0].metadata.filter: required field is missing'),
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"sourced_metadata": {
        "metadata_matcher": {"filter": "ns", "path": [{"key": "k"}], "value": {"present_match": True}},
        "metadata_source": "NOPE"}}]}}}},
     'rules.policies["p"].principals[0].sourced_metadata.metadata_source: unknown value "NOPE"'),
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"filter_state": {"key": "k"}}]}}}},
     'rules.policies["p"].principals[0].filter_state: not supported yet'),
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"any": True}],
                                   "condition": {"const_expr": {"bool_value": True}}}}}},
     'rules.policies["p"].condition: not supported yet (CEL expressions)'),
    ({"matcher": {"matcher_tree": {}}}, "matcher.matcher_tree: not supported yet"),
    ({"matcher": {"matcher_list": {"matchers": [{"predicate": {"single_predicate": {
        "input": {"name": "i", "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestTrailerMatchInput"}},
        "value_match": {"exact": "x"}}}, "on_match": {"action": {"name": "a", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "n"}}}}]}}},
     "not supported yet (\"envoy.type.matcher.v3.HttpRequestTrailerMatchInput\""),
    ({"rules": {"policies": {"p": {"permissions": [{"any": False}], "principals": [{"any": True}]}}}},
     'rules.policies["p"].permissions[0].any: must be true'),
    ({"rules": {"policies": {"p": {"principals": [{"any": True}]}}}},
     'rules.policies["p"].permissions: required field is missing'),
])
def test_what_rbac_refuses_is_named(upstream, rbac, where):
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_bootstrap(_config(upstream, rbac))
