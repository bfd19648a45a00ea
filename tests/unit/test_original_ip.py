"""The original client address (proxy/http/original_ip.py, request_headers.py): Envoy 1.40's
x-forwarded-for parsing, the detection extensions' config, and what mutate_request_headers
derives. The same rules against real Envoy: tests/differential/cases/xff_original_ip.yaml."""

from __future__ import annotations

import ipaddress

import pytest

import proxy.config.load  # noqa: F401  the catalogue of extensions
from proxy.config.reader import ConfigError
from proxy.http.hcm_config import parse_hcm
from proxy.http.hcm_factory import HcmFactory
from proxy.http.headers import Headers
from proxy.http.original_ip import (CustomHeaderDetection, IpDetectionRejected, XffDetection,
                                    last_address_from_xff, last_non_trusted_address_from_xff,
                                    parse_ip)
from proxy.http.request_headers import mutate_request_headers

XFF_TYPE = "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig"
CUSTOM_TYPE = ("type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3"
               ".CustomHeaderConfig")


@pytest.mark.parametrize("xff, skip, expected", [
    (b"1.2.3.4", 0, ("1.2.3.4", True)),             # one entry: may count as internal
    (b"1.2.3.4, 5.6.7.8", 0, ("5.6.7.8", False)),   # spaces around entries are trimmed
    (b"1.2.3.4,\t5.6.7.8", 1, ("1.2.3.4", False)),
    (b"1.2.3.4,5.6.7.8,9.9.9.9", 2, ("1.2.3.4", False)),
    (b"1.2.3.4,5.6.7.8", 2, (None, False)),          # fewer entries than trusted hops
    (b"1.2.3.4,", 0, (None, False)),                 # a trailing comma: Envoy parses "1.2.3.4,"
    (b",,5.5.5.5", 0, ("5.5.5.5", False)),
    (b"garbage,1.2.3.4", 0, ("1.2.3.4", False)),     # entries left of the one read are not read
    (b"1.2.3.4,garbage", 0, (None, False)),
    (b"1.2.3.4:80", 0, (None, False)),               # no port
    (b"[2001:db8::1]", 0, (None, False)),            # no brackets
    (b"2001:db8::1", 0, ("2001:db8::1", True)),
    (b"::ffff:1.2.3.4", 0, ("::ffff:1.2.3.4", True)),
    (b"01.2.3.4", 0, (None, False)),                 # inet_pton: no leading zeros
])
def test_last_address_from_xff_is_envoys(xff, skip, expected):
    assert last_address_from_xff(xff, skip) == expected


def test_last_non_trusted_address_skips_trusted_entries_from_the_right():
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert last_non_trusted_address_from_xff(b"7.7.7.7,10.0.0.1, 10.0.0.2", trusted) == ("7.7.7.7", False)
    assert last_non_trusted_address_from_xff(b"10.0.0.1,10.0.0.2", trusted) == ("10.0.0.1", False)
    assert last_non_trusted_address_from_xff(b"10.0.0.1", trusted) == ("10.0.0.1", True)
    assert last_non_trusted_address_from_xff(b"bad,10.0.0.2", trusted) == (None, False)


def test_parse_ip_takes_bare_literals_only():
    assert parse_ip(b"1.2.3.4") == "1.2.3.4"
    assert parse_ip(b" 1.2.3.4") is None
    assert parse_ip(b"") is None
    assert parse_ip(b"\xff") is None
    assert parse_ip("fe80::1%1") == "fe80::1%1"
    assert parse_ip("fe80::1%no-such-interface0") is None


def _hcm(**extra) -> dict:
    return {"stat_prefix": "t", "generate_request_id": False,
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}, **extra}


def _ext(type_url: str, **cfg) -> dict:
    return {"name": "x", "typed_config": {"@type": type_url, **cfg}}


def _err(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_hcm(raw, "hcm")
    return str(e.value)


def test_extensions_are_refused_beside_use_remote_address_or_trusted_hops_as_envoy():
    assert "may not be mixed" in _err(_hcm(use_remote_address=True,
                                           original_ip_detection_extensions=[_ext(XFF_TYPE)]))
    msg = _err(_hcm(xff_num_trusted_hops=1, original_ip_detection_extensions=[_ext(XFF_TYPE)]))
    assert msg.startswith("hcm.original_ip_detection_extensions: ") and "xff_num_trusted_hops" in msg


def test_xff_extension_config_errors_name_the_field():
    cidrs = {"cidrs": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}
    assert "Cannot set both" in _err(_hcm(original_ip_detection_extensions=[
        _ext(XFF_TYPE, xff_num_trusted_hops=1, xff_trusted_cidrs=cidrs)]))
    # Envoy 1.40 has no `recurse` (it always looks past trusted entries).
    assert "recurse" in _err(_hcm(original_ip_detection_extensions=[
        _ext(XFF_TYPE, xff_trusted_cidrs={**cidrs, "recurse": True})]))
    assert "address_prefix" in _err(_hcm(original_ip_detection_extensions=[
        _ext(XFF_TYPE, xff_trusted_cidrs={"cidrs": [{"address_prefix": "ten"}]})]))


def test_custom_header_config():
    c = parse_hcm(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="X-Real-IP", reject_with_status={"code": 200}),
        _ext(CUSTOM_TYPE, header_name="x-b", reject_with_status={"code": 451},
             allow_extension_to_set_address_as_trusted=True),
        _ext(XFF_TYPE, xff_num_trusted_hops=2)]), "hcm")
    assert c.original_ip_detection == (
        CustomHeaderDetection(b"x-real-ip", False, 403),   # out of 400..511: 403, as Envoy
        CustomHeaderDetection(b"x-b", True, 451), XffDetection(2, (), True))
    assert "header_name" in _err(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="bad name")]))


class _Info:
    derived_remote_address = None
    force_trace = False


def _request(factory: HcmFactory, peer: str, *fields: tuple[bytes, bytes]) -> tuple[Headers, _Info]:
    headers = Headers([(b"host", b"h"), *fields])
    info = _Info()
    mutate_request_headers(factory, headers, peer, None, None, info)
    return headers, info


INTERNAL = {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}


def test_without_use_remote_address_the_xff_entry_becomes_the_remote_address():
    f = HcmFactory(parse_hcm(_hcm(xff_num_trusted_hops=1), "hcm"))
    headers, info = _request(f, "127.0.0.1", (b"x-forwarded-for", b"1.2.3.4, 2001:db8::1"))
    assert info.derived_remote_address == "1.2.3.4:0"
    assert headers.get(b"x-forwarded-for") == b"1.2.3.4, 2001:db8::1"   # left as it came
    headers, info = _request(f, "127.0.0.1", (b"x-forwarded-for", b"2001:db8::1,1.1.1.1"))
    assert info.derived_remote_address == "[2001:db8::1]:0"
    _, info = _request(f, "127.0.0.1")
    assert info.derived_remote_address is None   # the peer's


def test_repeated_xff_fields_are_joined_into_one():
    f = HcmFactory(parse_hcm(_hcm(), "hcm"))
    headers, info = _request(f, "127.0.0.1", (b"x-forwarded-for", b"1.2.3.4"),
                             (b"x-forwarded-for", b"5.6.7.8"))
    assert headers.get_all(b"x-forwarded-for") == [b"1.2.3.4,5.6.7.8"]
    assert info.derived_remote_address == "5.6.7.8:0"


def test_a_single_internal_xff_entry_makes_the_request_internal():
    f = HcmFactory(parse_hcm(_hcm(internal_address_config=INTERNAL), "hcm"))
    retry = (b"x-envoy-retry-on", b"5xx")
    ip_tags = (b"x-envoy-ip-tags", b"t")
    headers, _ = _request(f, "127.0.0.1", (b"x-forwarded-for", b"10.1.2.3"), retry, ip_tags)
    assert headers.get(b"x-envoy-internal") == b"true"
    # It keeps its x-envoy-* fields, those steering the router too (the router removes them).
    assert headers.get(b"x-envoy-ip-tags") == b"t" and headers.get(b"x-envoy-retry-on") == b"5xx"
    for xff in (b"10.1.2.3,10.1.2.4", b"1.2.3.4"):   # two entries, or not internal: external
        headers, _ = _request(f, "127.0.0.1", (b"x-forwarded-for", xff), ip_tags,
                              (b"x-envoy-internal", b"true"))
        assert headers.get(b"x-envoy-internal") is None and headers.get(b"x-envoy-ip-tags") is None


def test_internal_needs_a_listed_network_since_envoy_1_33():
    f = HcmFactory(parse_hcm(_hcm(), "hcm"))
    headers, _ = _request(f, "127.0.0.1", (b"x-forwarded-for", b"10.1.2.3"))
    assert headers.get(b"x-envoy-internal") is None


def test_use_remote_address_with_trusted_hops_sets_the_external_address():
    f = HcmFactory(parse_hcm(_hcm(use_remote_address=True, xff_num_trusted_hops=1,
                                  skip_xff_append=True), "hcm"))
    headers, info = _request(f, "192.0.2.1", (b"x-forwarded-for", b"1.2.3.4,5.6.7.8"),
                             (b"x-forwarded-proto", b"https"))
    assert info.derived_remote_address == "5.6.7.8:0"
    assert headers.get(b"x-envoy-external-address") == b"5.6.7.8"
    assert headers.get(b"x-forwarded-proto") == b"https"   # a trusted hop's, kept
    headers, info = _request(f, "192.0.2.1", (b"x-forwarded-for", b"bad"))
    assert info.derived_remote_address is None
    assert headers.get(b"x-envoy-external-address") == b"192.0.2.1"


def test_custom_header_rejects_or_falls_through():
    f = HcmFactory(parse_hcm(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="x-real-ip"), _ext(XFF_TYPE)]), "hcm"))
    _, info = _request(f, "127.0.0.1", (b"x-real-ip", b"8.8.8.8"), (b"x-forwarded-for", b"1.1.1.1"))
    assert info.derived_remote_address == "8.8.8.8:0"
    _, info = _request(f, "127.0.0.1", (b"x-real-ip", b"nope"), (b"x-forwarded-for", b"1.1.1.1"))
    assert info.derived_remote_address == "1.1.1.1:0"
    f = HcmFactory(parse_hcm(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="x-real-ip", reject_with_status={"code": 401})]), "hcm"))
    with pytest.raises(IpDetectionRejected) as e:
        _request(f, "127.0.0.1", (b"x-forwarded-for", b"1.1.1.1"))
    assert e.value.status == 401


def test_xff_extension_appends_for_an_untrusted_peer_or_without_skip():
    f = HcmFactory(parse_hcm(_hcm(original_ip_detection_extensions=[_ext(
        XFF_TYPE, xff_trusted_cidrs={"cidrs": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]})]),
        "hcm"))
    headers, info = _request(f, "192.0.2.1", (b"x-forwarded-for", b"1.2.3.4"))
    assert info.derived_remote_address is None
    assert headers.get(b"x-forwarded-for") == b"1.2.3.4,192.0.2.1"
    headers, info = _request(f, "10.0.0.9", (b"x-forwarded-for", b"1.2.3.4,10.0.0.5"))
    assert info.derived_remote_address == "1.2.3.4:0"
    assert headers.get(b"x-forwarded-for") == b"1.2.3.4,10.0.0.5"   # skip_xff_append: true


def test_reject_status_by_name_and_pseudo_header_names():
    c = parse_hcm(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="x-a", reject_with_status={"code": "TooManyRequests"})]), "hcm")
    assert c.original_ip_detection[0].reject_with_status == 429
    assert "reject_with_status.code" in _err(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name="x-a", reject_with_status={"code": "Nope"})]))
    assert "pseudo-header is not supported yet" in _err(_hcm(original_ip_detection_extensions=[
        _ext(CUSTOM_TYPE, header_name=":authority")]))
