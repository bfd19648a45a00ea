"""proxy/http/path_normalize.py against Envoy's own test vectors.

The path vectors are test/common/http/path_utility_test.cc's (envoyproxy/envoy: PathUtilityTest
AlreadyNormalPaths, InvalidPaths, NormalizeValidPaths, NormalizeCasePath, MergeSlashes,
UnescapeSlashes), the host vectors test/common/http/header_utility_test.cc's
(HeaderUtilityTest RemovePortsFromHost, RemoveTrailingDotFromHost); the request-level cases
(what Envoy 1.40 forwards, refuses, redirects) are tests/differential/cases/path_normalization.yaml.
"""

from __future__ import annotations

import pytest

import proxy.extensions  # noqa: F401  fills the registry (the router filter)

from proxy.config.reader import ConfigError
from proxy.http.hcm_config import parse_hcm
from proxy.http.path_normalize import (CONTINUE, REDIRECT, REJECT, HeadNormalization,
                                       canonical_path,
                                       compile_normalization, merge_slashes,
                                       normalize_request_path, strip_host_port,
                                       strip_trailing_host_dot, unescape_slashes)


@pytest.mark.parametrize("path", [b"/xyz", b"/x/y/z"])
def test_already_normal_paths_do_not_change(path):
    assert canonical_path(path) == path


@pytest.mark.parametrize("path", [b"/xyz/.%00../abc", b"/xyz/%00.%00./abc",
                                  b"/xyz/AAAAA%%0000/abc"])
def test_an_escaped_nul_fails_the_normalisation(path):
    assert canonical_path(path) is None


@pytest.mark.parametrize("path,expected", [
    (b"/a/b/../c", b"/a/c"),                # parent dir
    (b"/a/b/./c", b"/a/b/c"),               # current dir
    (b"a/b/../c", b"/a/c"),                 # non / start
    (b"/a/b/../../../../c", b"/c"),         # out number parent
    (b"/a/..\\c", b"/c"),                   # "..\\" canonicalization
    (b"/%c0%af", b"/%c0%af"),               # 2 bytes unicode reserved characters
    (b"/%5c%25", b"/%5c%25"),               # reserved characters
    (b"/a/b/%2E%2E/c", b"/a/c"),            # %2E escape
    (b"/a/b/%2E./c", b"/a/c"),
    (b"/a/b/%2E/c", b"/a/b/c"),
    (b"..", b"/"),
    (b"/../a/b", b"/a/b"),
    (b"/./a/b", b"/a/b"),
    # NormalizeCasePath
    (b"/A/B/C", b"/A/B/C"),                 # not normalized to lower case
    (b"/a/b/%2e%2e/c", b"/a/c"),            # %2e can be normalized to .
    (b"/a/%2F%2f/c", b"/a/%2F%2f/c"),       # %2F is not normalized to %2f
])
def test_envoy_normalize_valid_paths(path, expected):
    assert canonical_path(path) == expected


@pytest.mark.parametrize("path,expected", [
    (b"/%41%62%7E%5F%2D%30", b"/Ab~_-0"),   # escaped unreserved characters decoded
    (b'/a/"q"/^`{|}', b"/a/%22q%22/%5E%60%7B%7C%7D"),  # unsafe characters escaped
    (b"/a/%zz/%4/%", b"/a/%zz/%4/%"),       # not escapes: passed on
    (b"/a/b/..", b"/a/"),                   # ".." at the end keeps the slash
    (b"/a/..b/c../.d/e.", b"/a/..b/c../.d/e."),  # dots inside names
    (b"/a%2eb/c%2E", b"/a.b/c."),
    (b"/a/../b//c?x=/../y", b"/b//c?x=/../y"),   # the query is not touched
    (b"//", b"//"),                         # Chromium does not merge slashes
    (b"/%2%41", b"/%252A"),                 # a decoding that would make a new escape
    (b"/%%30%30", b"/%2500"),               # (Chromium's CheckForNestedEscapes)
    (b"/%%41B", b"/%25AB"),
])
def test_chromium_canonicalisation_as_envoy_1_40_links_it(path, expected):
    assert canonical_path(path) == expected


@pytest.mark.parametrize("path,expected", [
    (b"", b""), (b"a//b/c", b"a/b/c"), (b"/a//b/c/", b"/a/b/c/"), (b"a//b/c/", b"a/b/c/"),
    (b"/a", b"/a"), (b"//a/b/c", b"/a/b/c"), (b"/a//b/c", b"/a/b/c"), (b"/a/b/c//", b"/a/b/c/"),
    (b"/a///b/c", b"/a/b/c"), (b"/a////b/c", b"/a/b/c"),
    (b"/a//b?a=///c", b"/a/b?a=///c"),      # slashes in the query are ignored
    (b"/a//b?", b"/a/b?"),                  # empty query
    (b"//a/?b", b"/a/?b"),                  # ends with slash + query
    (b"///", b"//"),                        # Envoy's join: only slashes leave two
])
def test_envoy_merge_slashes(path, expected):
    assert merge_slashes(path) == expected


@pytest.mark.parametrize("path,expected", [
    (b"", None), (b"%2f%2F", b"//"), (b"/a%2Fb%2fc/", b"/a/b/c/"), (b"%2b", None),
    (b"/a/b/c", None), (b"%2", None), (b"%", None), (b"/abc%2", None), (b"foo%", None),
    (b"/a%2F", b"/a/"), (b"%2fa/", b"/a/"), (b"%%2fa/", b"%/a/"), (b"%2%2fa/", b"%2/a/"),
    (b"%5c%5C", b"\\\\"), (b"/a%5Cb%5cc/", b"/a\\b\\c/"), (b"/a%5C", b"/a\\"),
    (b"%5ca/", b"\\a/"),
    (b"/x/%2E%2e/z%2f%2Fabc%5C../def", b"/x/%2E%2e/z//abc\\../def"),
    (b"%2fa%5Cb%2fc%5c", b"/a\\b/c\\"),
    (b"%2fa%5Cb%2fc%5c?%2fabcd%5C%%2f%", b"/a\\b/c\\?%2fabcd%5C%%2f%"),  # query untouched
    (b"/a?%2F", None),
])
def test_envoy_unescape_slashes(path, expected):
    """None: Envoy's UnescapeSlashesResult::NotFound (the path unchanged)."""
    assert unescape_slashes(path) == expected


@pytest.mark.parametrize("host,expected", [
    (b"localhost", b"localhost"), (b"localhost:443", b"localhost"), (b"", b""), (b":443", b""),
    (b"192.168.1.1", b"192.168.1.1"), (b"192.168.1.1:443", b"192.168.1.1"),
    (b"[fc00::1]:443", b"[fc00::1]"), (b"[fc00::1]", b"[fc00::1]"), (b":", b":"), (b"]:", b"]:"),
    (b":abc", b":abc"), (b"localhost:80", b"localhost:80"), (b"192.168.1.1:80", b"192.168.1.1:80"),
    (b"[fc00::1]:80", b"[fc00::1]:80"),
])
def test_envoy_remove_matching_port_from_host(host, expected):
    assert strip_host_port(host, 443) == expected


@pytest.mark.parametrize("host,expected", [
    (b"localhost:9999", b"localhost"), (b"a:b:8080", b"a:b"), (b"example.com:abc", b"example.com:abc"),
    (b"example.com:", b"example.com:"), (b"example.com:99999999999", b"example.com:99999999999"),
])
def test_remove_any_port_from_host(host, expected):
    assert strip_host_port(host, None) == expected


@pytest.mark.parametrize("host,expected", [
    (b"localhost", b"localhost"), (b"localhost.", b"localhost"), (b"", b""),
    (b"192.168.1.1", b"192.168.1.1"), (b"abc.com", b"abc.com"), (b"abc.com.", b"abc.com"),
    (b"abc.com:443", b"abc.com:443"), (b"abc.com.:443", b"abc.com:443"),
    (b"[fc00::1]", b"[fc00::1]"), (b":", b":"), (b"]:", b"]:"), (b":abc", b":abc"),
    (b".", b""), (b"..", b"."), (b".123", b".123"), (b".:.", b".:"),
])
def test_envoy_remove_trailing_dot_from_host(host, expected):
    assert strip_trailing_host_dot(host) == expected


@pytest.mark.parametrize("path,expected", [
    (b"/a/..;x/y", b"/y"), (b"/a/.;x/y", b"/a/y"), (b"/..;/x", b"/x"), (b"/a/..;", b"/"),
    (b"/a/b/.;../c", b"/a/b/c"), (b"/a/..;x\\b/c", b"/c"),
    (b"/a/...;x/y", b"/a/...;x/y"), (b"/a/b;c", b"/a/b;c"),     # not dot segments
    (b"/a/%2e%2e;x/y", b"/a/..;x/y"), (b"/a\\..;x/y", b"/a/..;x/y"),  # %2E, after a backslash
    (b"/a/..;x?q=..;/", b"/?q=..;/"),        # the query is not touched
])
def test_dot_segment_parameters_are_dropped_as_envoy_1_40_does(path, expected):
    """Measured against Envoy 1.40 (1,500 random paths agreed; the case has the telling ones)."""
    norm = HeadNormalization(normalize_path=True)
    assert normalize_request_path(path, norm) == (CONTINUE, expected)


def test_a_refused_path_keeps_its_dropped_parameters_dropped():
    norm = HeadNormalization(normalize_path=True)
    assert normalize_request_path(b"/.;%2E/%00/", norm) == (REJECT, b"/./%00/")


def _norm(**options):
    raw = {"stat_prefix": "x", "route_config": {"virtual_hosts": []}, **options}
    return compile_normalization(parse_hcm(raw, "hcm"))


def test_no_option_compiles_to_nothing_and_only_a_fragment_is_refused():
    assert _norm() is None
    assert _norm(use_remote_address=True, path_with_escaped_slashes_action=
                 "IMPLEMENTATION_SPECIFIC_DEFAULT") is None
    assert normalize_request_path(b"/a/../b%2F", None) == (CONTINUE, b"/a/../b%2F")
    assert normalize_request_path(b"/a?q#f", None) == (REJECT, b"/a?q#f")


def test_escaped_slashes_modes_then_normalisation_then_merging():
    assert normalize_request_path(b"/a%2Fb", _norm(path_with_escaped_slashes_action=
                                                   "REJECT_REQUEST")) == (REJECT, b"/a/b")
    redirect = _norm(path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT",
                     normalize_path=True, merge_slashes=True)
    assert normalize_request_path(b"/a/..%2F%2fb?q=%2F", redirect) == (REDIRECT, b"/b?q=%2F")
    assert normalize_request_path(b"/a/../b", redirect) == (CONTINUE, b"/b")
    # A refusal after the unescaping keeps what it made of the path (Envoy logs that).
    assert normalize_request_path(b"/a%2F%00", redirect) == (REJECT, b"/a/%00")
    forward = _norm(path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD")
    assert normalize_request_path(b"/a%2F..%5Cb", forward) == (CONTINUE, b"/a/..\\b")


def test_host_normalisation_strips_the_dot_before_the_port():
    norm = _norm(strip_trailing_host_dot=True, strip_matching_host_port=True)
    assert norm.host(b"example.com.:8443", 8443) == b"example.com"
    assert norm.host(b"example.com.:80", 8443) == b"example.com:80"
    assert _norm(strip_any_host_port=True).host(b"[::1]:80", 8443) == b"[::1]"


def test_both_port_stripping_options_are_an_error_as_in_envoy():
    with pytest.raises(ConfigError) as e:
        _norm(strip_matching_host_port=True, strip_any_host_port=True)
    assert str(e.value).startswith("hcm.strip_any_host_port: only one of")


def test_path_normalization_options_are_validated_as_envoy_and_change_nothing():
    ok = {"forwarding_transformation": {"operations": [{"merge_slashes": {}},
                                                       {"normalize_path_rfc_3986": {}}]}}
    assert _norm(path_normalization_options=ok) is None
    with pytest.raises(ConfigError) as e:
        _norm(path_normalization_options={"http_filter_transformation": {"operations": [{}]}})
    assert "path_normalization_options.http_filter_transformation.operations[0]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _norm(path_normalization_options={"forwarding_transformation": {"operations": [
            {"merge_slashes": {}, "normalize_path_action": "REDIRECT"}]}})
    assert 'unknown field "normalize_path_action"' in str(e.value)


def test_an_unknown_escaped_slashes_action_names_the_field():
    with pytest.raises(ConfigError) as e:
        _norm(path_with_escaped_slashes_action="UNESCAPE")
    assert str(e.value).startswith("hcm.path_with_escaped_slashes_action")
