"""The pure parts of what HTTP and the admin see of TLS: the HCM's XFCC fields, the route match
`tls_context`, the TLS format operators, /certs details, config-dump redaction, and proxyctl
top's TLS line (the running proxy: tests/integration/test_http_over_tls.py)."""

from __future__ import annotations

import datetime

import pytest
from rich.console import Console

import proxy.config.load  # noqa: F401  registers every extension (the router filter)
from cli.top import TopModel, render_top
from proxy.access_log.formatter import compile_format
from proxy.access_log.stream_info import StreamInfo
from proxy.access_log.tls_operators import TLS_OPERATORS, serial_hex
from proxy.admin.certs import certificate_details, redact_config
from proxy.config.reader import ConfigError
from proxy.http.hcm_config import parse_hcm
from proxy.router.header_mutation import compile_value_format
from proxy.router.matchers import RequestView, parse_route_match
from proxy.tls.info import TlsInfo
from tests.tls_certs import CertAuthority

ROUTE_CONFIG = {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}


def _hcm(**extra):
    return parse_hcm({"stat_prefix": "t", "route_config": ROUTE_CONFIG, **extra}, "hcm")


# -- HCM -----------------------------------------------------------------------------------

def test_forward_client_cert_details_defaults_to_sanitize_and_takes_every_mode():
    assert _hcm().forward_client_cert_details == "SANITIZE"
    for mode in ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"):
        assert _hcm(forward_client_cert_details=mode).forward_client_cert_details == mode
    with pytest.raises(ConfigError, match="forward_client_cert_details"):
        _hcm(forward_client_cert_details="FORWARD_ALL")


def test_set_current_client_cert_details_is_kept_in_envoys_order_whatever_the_yaml_order():
    cfg = _hcm(forward_client_cert_details="SANITIZE_SET",
               set_current_client_cert_details={"dns": True, "uri": True, "subject": {"value": True},
                                                "chain": True, "cert": True})
    assert cfg.set_current_client_cert_details == ("cert", "chain", "subject", "uri", "dns")
    assert _hcm(set_current_client_cert_details={"uri": True, "cert": False}) \
        .set_current_client_cert_details == ("uri",)
    with pytest.raises(ConfigError, match='set_current_client_cert_details: unknown field "san"'):
        _hcm(set_current_client_cert_details={"san": True})  # the v2 field, gone in v3


def test_xfcc_is_in_the_removed_set_only_under_sanitize():
    from proxy.http.hcm_factory import HcmFactory
    assert b"x-forwarded-client-cert" in HcmFactory(_hcm()).request_headers_removed
    for mode in ("FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"):
        factory = HcmFactory(_hcm(forward_client_cert_details=mode))
        assert b"x-forwarded-client-cert" not in factory.request_headers_removed


# -- route match tls_context -----------------------------------------------------------------

class _Req:
    def __init__(self, tls=None) -> None:
        self.path_str = "/x"
        self.path = b"/x"
        self.headers = None
        self.tls = tls


@pytest.fixture(scope="module")
def client_info():
    ca = CertAuthority()
    cert, _ = ca.issue(["client.test"], cn="client", uris=["spiffe://a/b"], client=True)
    local, _ = ca.issue(["localhost"], uris=["spiffe://front"])
    return TlsInfo(tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", peer_certificate=cert,
                   local_certificate=local, peer_chain=(cert,), peer_validated=True)


def test_route_match_tls_context(client_info):
    presented = parse_route_match({"prefix": "/", "tls_context": {"presented": True}}, "m")
    validated_false = parse_route_match({"prefix": "/", "tls_context": {"validated": False}}, "m")
    assert presented.raw_prefix is None  # the fast prefix path would skip the TLS check
    assert presented.matches(RequestView(_Req(client_info)))
    assert not presented.matches(RequestView(_Req(None)))
    unvalidated = TlsInfo(peer_certificate=client_info.peer_certificate, peer_validated=False)
    assert presented.matches(RequestView(_Req(unvalidated)))
    assert validated_false.matches(RequestView(_Req(unvalidated)))
    assert validated_false.matches(RequestView(_Req(None)))
    assert not validated_false.matches(RequestView(_Req(client_info)))
    with pytest.raises(ConfigError, match='m.tls_context: unknown field "bogus"'):
        parse_route_match({"prefix": "/", "tls_context": {"bogus": True}}, "m")


# -- operators -------------------------------------------------------------------------------

def test_tls_operators_render_dash_without_tls_and_values_with_it(client_info):
    fmt = compile_format("%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% "
                         "%UPSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_SERIAL%", "f")
    info = StreamInfo()
    assert fmt.format(info) == "- - - - -"
    info.downstream_ssl = client_info
    serial = f"{client_info.peer_certificate.serial_number:x}"
    assert fmt.format(info) == (f"TLSv1.3 spiffe://a/b spiffe://front - "
                                f"{serial.zfill(len(serial) + len(serial) % 2)}")
    # In a header value an absent value is empty (and the header is then not added).
    assert compile_value_format("v=%DOWNSTREAM_TLS_CIPHER%", "h").format(StreamInfo()) == "v="


@pytest.mark.parametrize("op", ["UPSTREAM_PEER_SERIAL", "UPSTREAM_PEER_FINGERPRINT_256", "UPSTREAM_LOCAL_SUBJECT"])
def test_upstream_operators_envoy_does_not_have_are_unknown(op):
    assert op not in TLS_OPERATORS
    with pytest.raises(ConfigError, match="unknown command operator"):
        compile_format(f"%{op}%", "f")


def test_session_id_is_refused_by_name():
    with pytest.raises(ConfigError, match="DOWNSTREAM_TLS_SESSION_ID% is not supported yet"):
        compile_format("%DOWNSTREAM_TLS_SESSION_ID%", "f")


def test_serial_is_whole_bytes_in_lower_case_hex():
    class C:
        serial_number = 0xABC
    assert serial_hex(C) == "0abc"


# -- /certs and redaction ----------------------------------------------------------------------

def test_certificate_details_of_an_expired_certificate_has_zero_days_left():
    ca = CertAuthority()
    cert, _ = ca.issue(["old.test"], expired=True)
    d = certificate_details(cert, "<inline>")
    assert d["days_until_expiration"] == "0"
    assert d["path"] == "<inline>" and d["subject_alt_names"] == [{"dns": "old.test"}]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5)
    fresh, _ = ca.issue(["new.test", "10.0.0.1"], days=30)
    d = certificate_details(fresh, "/f.pem", now=later)
    assert d["days_until_expiration"] in ("24", "25")
    assert d["subject_alt_names"] == [{"dns": "new.test"}, {"ip_address": "10.0.0.1"}]


def test_redaction_covers_envoys_sensitive_fields_and_nothing_else():
    tree = {"static_resources": {
        "listeners": [{"filter_chains": [{"transport_socket": {"typed_config": {
            "common_tls_context": {"tls_certificates": [
                {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/k.pem"},
                 "password": {"inline_bytes": "cGFzcw=="}},
                {"pkcs12": {"filename": "/p.p12"}, "watched_directory": {"path": "/w"}}],
                "validation_context": {"trusted_ca": {"inline_string": "PEM"}}},
            "session_ticket_keys": {"keys": [{"inline_bytes": "a2V5"}, {"filename": "/t"}]}}}}]}],
        "secrets": [{"name": "s", "generic_secret": {"secret": {"inline_string": "x"}}},
                    {"name": "t", "tls_certificate": {"private_key": {"inline_string": "k"}}}]}}
    out = redact_config(tree)
    ctx = out["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    certs = ctx["common_tls_context"]["tls_certificates"]
    assert certs[0] == {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "[redacted]"},
                        "password": {"inline_bytes": "W3JlZGFjdGVkXQ=="}}
    assert certs[1] == {"pkcs12": {"filename": "[redacted]"}, "watched_directory": {"path": "/w"}}
    assert ctx["common_tls_context"]["validation_context"] == {"trusted_ca": {"inline_string": "PEM"}}
    assert ctx["session_ticket_keys"] == {"keys": [{"inline_bytes": "W3JlZGFjdGVkXQ=="},
                                                   {"filename": "[redacted]"}]}
    secrets = out["static_resources"]["secrets"]
    assert secrets[0]["generic_secret"] == {"secret": {"inline_string": "[redacted]"}}
    assert secrets[1]["tls_certificate"] == {"private_key": {"inline_string": "[redacted]"}}
    assert tree["static_resources"]["secrets"][0]["generic_secret"]["secret"]["inline_string"] == "x"


# -- proxyctl top -----------------------------------------------------------------------------

def _stats(values: dict[str, int]) -> dict:
    return {"stats": [{"name": n, "value": v} for n, v in values.items()]}


def test_top_sums_tls_handshakes_and_errors_over_listeners_and_clusters():
    m = TopModel("127.0.0.1:9901")
    first = {"listener.a.ssl.handshake": 10, "listener.b.ssl.handshake": 5, "listener.a.ssl.connection_error": 1,
             "cluster.up.ssl.handshake": 4, "cluster.up.ssl.connection_error": 0,
             "listener.a.ssl.ciphers.TLS_AES_128_GCM_SHA256": 10}
    view = m.update(_stats(first), {}, {}, now=100.0)
    assert view.header.tls.down_handshakes == 15 and view.header.tls.down_handshakes_per_s is None
    second = dict(first, **{"listener.a.ssl.handshake": 30, "listener.b.ssl.handshake": 15,
                            "listener.a.ssl.connection_error": 5, "cluster.up.ssl.handshake": 8})
    t = m.update(_stats(second), {}, {}, now=102.0).header.tls
    assert (t.down_handshakes, t.down_errors, t.up_handshakes, t.up_errors) == (45, 5, 8, 0)
    assert (t.down_handshakes_per_s, t.down_errors_per_s, t.up_handshakes_per_s, t.up_errors_per_s) == \
        (15.0, 2.0, 2.0, 0.0)
    console = Console(width=80, record=True)
    console.print(render_top(m.view(), 1.0, width=80, height=24))
    text = console.export_text()
    assert "TLS  down 15.0 hs/s 2.0 err/s (45/5)  up 2.0 hs/s 0.0 err/s (8/0)" in text
    assert len(text.splitlines()) <= 24


def test_top_shows_no_tls_line_without_tls_stats():
    m = TopModel("127.0.0.1:9901")
    view = m.update(_stats({"http.x.downstream_rq_total": 1}), {}, {}, now=1.0)
    assert view.header.tls is None
    console = Console(width=80, record=True)
    console.print(render_top(view, 1.0, width=80, height=24))
    assert "TLS" not in console.export_text()
