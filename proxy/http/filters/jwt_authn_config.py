"""The config of `envoy.filters.http.jwt_authn` (`envoy.extensions.filters.http.jwt_authn.v3`),
parsed once at load into immutable objects the workers share: providers (where a token is found,
which keys check it, what a good token passes on), requirement trees, the rules that pick a
requirement by route match, the requirement map and the per-route config.

Envoy's load-time checks are kept: a requirement naming an unknown provider ("Required provider
['x'] is not configured."), a rule or route naming an unknown requirement, a remote JWKS URI
that is not a URI, `requires_any` / `requires_all` with fewer than two requirements, a local
JWKS without a usable key ("Provider 'p' in jwt_authn config has invalid local jwks: <why>"; an
empty one loads, and its provider's tokens fail with "Jwks doesn't have any valid public key").

Must not: do network I/O (a local JWKS file is read here, at load, as Envoy reads it).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...config.fields_table import Message, refused, used
from ...config.reader import ConfigError, header_bytes
from ...router.matchers import RouteMatch, StringMatcher, parse_route_match, parse_string_matcher
from .jwt_verify import Jwks, JwtError, parse_jwks, sanitize_audience

__all__ = ["JwtAuthentication", "JwtProvider", "RemoteJwks", "PerRouteConfig", "Requirement",
           "parse_jwt_authentication", "parse_per_route"]

NAME = "envoy.filters.http.jwt_authn"
PROTO = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE_PROTO = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
_DEFAULT_CACHE_DURATION = 600.0   # RemoteJwks.cache_duration's default: 10 minutes
_DEFAULT_CLOCK_SKEW = 60          # jwt_verify_lib's kClockSkewInSecond
_DEFAULT_JWT_CACHE_SIZE = 100     # JwtCacheConfig.jwt_cache_size 0 / unset
_MAX_CACHED_TOKEN = 4096          # JwtCacheConfig.jwt_max_token_size 0 / unset: longer ones are not kept


@dataclass(frozen=True, slots=True)
class RemoteJwks:
    cluster: str
    path: bytes
    authority: bytes
    timeout: float
    cache_duration: float = _DEFAULT_CACHE_DURATION


@dataclass(frozen=True, slots=True)
class JwtProvider:
    name: str
    issuer: str = ""
    audiences: frozenset[str] = frozenset()       # sanitized (scheme, trailing slash dropped)
    local_jwks: Jwks | None = None                 # None: no usable local keys
    remote_jwks: RemoteJwks | None = None
    forward: bool = False
    from_headers: tuple[tuple[bytes, bytes], ...] = ()   # (lower-case name, value_prefix)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_payload_header: bytes = b""
    pad_forward_payload_header: bool = False
    claim_to_headers: tuple[tuple[bytes, tuple[str, ...]], ...] = ()  # (header, claim path)
    clock_skew_seconds: int = _DEFAULT_CLOCK_SKEW
    clear_route_cache: bool = False
    subjects: StringMatcher | None = None
    max_lifetime: float | None = None              # seconds; inf: require_expiration
    payload_in_metadata: str = ""                  # dynamic metadata keys (namespace jwt_authn)
    header_in_metadata: str = ""
    failed_status_in_metadata: str = ""
    space_delimited_claims: tuple[str, ...] = ()   # normalize_payload_in_metadata
    jwt_cache_size: int = 0                        # 0: no cache of verified tokens (the default)
    jwt_max_token_size: int = _MAX_CACHED_TOKEN


# Requirement trees (JwtRequirement), each node immutable.
@dataclass(frozen=True, slots=True)
class ProviderRequirement:
    provider: JwtProvider
    audiences: frozenset[str] | None = None   # provider_and_audiences: overrides the provider's


@dataclass(frozen=True, slots=True)
class AnyRequirement:
    children: tuple[Any, ...]
    allow_missing_or_failed: bool = False
    allow_missing: bool = False


@dataclass(frozen=True, slots=True)
class AllRequirement:
    children: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AllowMissing:
    """allow_missing (failed=False) / allow_missing_or_failed (failed=True): tokens of any
    provider, picked by their issuer."""
    failed: bool


@dataclass(frozen=True, slots=True)
class AllowAll:
    """An empty JwtRequirement: nothing is required."""


Requirement = ProviderRequirement | AnyRequirement | AllRequirement | AllowMissing | AllowAll


@dataclass(frozen=True, slots=True)
class JwtAuthentication:
    providers: tuple[JwtProvider, ...]
    rules: tuple[tuple[RouteMatch, Any], ...] = ()    # (match, Requirement or None)
    requirement_map: Mapping[str, Any] | None = None
    bypass_cors_preflight: bool = False
    strip_failure_response: bool = False
    stat_prefix: str = ""

    @property
    def requirement_names(self) -> str:
        """Envoy's list in its "Wrong requirement_name" message: the names sorted, comma-joined."""
        return ",".join(sorted(self.requirement_map or ()))


@dataclass(frozen=True, slots=True)
class PerRouteConfig:
    disabled: bool = False
    requirement_name: str = ""


JWT_AUTHENTICATION = Message(PROTO, title="HTTP filter jwt_authn", model=JwtAuthentication, fields=(
    used("providers"),
    used("rules"),
    refused("filter_state_rules", "requirements chosen by filter state"),
    used("bypass_cors_preflight", False),
    used("requirement_map"),
    used("strip_failure_response", False),
    used("stat_prefix", ""),
))
JWT_PROVIDER = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtProvider", model=JwtProvider,
                       bookkeeping=("name",), fields=(
    used("issuer", ""),
    used("audiences"),
    used("subjects"),
    used("require_expiration", False, attr="max_lifetime"),
    used("max_lifetime"),
    used("remote_jwks"),
    used("local_jwks"),
    used("forward", False),
    used("from_headers"),
    used("from_params"),
    used("from_cookies"),
    used("forward_payload_header", ""),
    used("pad_forward_payload_header", False),
    used("payload_in_metadata", "", why="read by a Lua filter's streamInfo():dynamicMetadata()"),
    used("normalize_payload_in_metadata", attr="space_delimited_claims"),
    used("header_in_metadata", ""),
    used("failed_status_in_metadata", ""),
    used("clock_skew_seconds", 60, why="0 means the default, 60"),
    used("jwt_cache_config", attr="jwt_cache_size", why="off unless set, as Envoy"),
    used("claim_to_headers"),
    used("clear_route_cache", False),
))
NORMALIZE_PAYLOAD = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload", fields=(
    used("space_delimited_claims"),
))
JWT_CACHE_CONFIG = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtCacheConfig", fields=(
    used("jwt_cache_size", 100, why="0 means the default, 100"),
    used("jwt_max_token_size", 4096, why="0 means the default, 4 KiB"),
))
REMOTE_JWKS = Message("envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks", model=RemoteJwks, fields=(
    used("http_uri", attr="cluster", why="its own table"),
    used("cache_duration", 600.0),
    refused("async_fetch", "fetching on the main thread before the listener starts; "
            "keys are fetched by each worker when a request needs them"),
    refused("retry_policy", "retries of the JWKS fetch"),
))
HTTP_URI = Message("envoy.config.core.v3.HttpUri (jwt_authn)", fields=(
    used("uri", attr="path", why="its path and authority"),
    used("cluster"),
    used("timeout", why="required"),
))
JWT_HEADER = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtHeader", fields=(
    used("name", attr="from_headers"),
    used("value_prefix", attr="from_headers"),
))
CLAIM_TO_HEADER = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader", fields=(
    used("header_name", attr="claim_to_headers"),
    used("claim_name", attr="claim_to_headers"),
    used("claim_path", attr="claim_to_headers", why="keys that may hold dots"),
))
PATH_SEGMENT = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader.PathSegment", fields=(
    used("key", attr="claim_to_headers"),
))
LOCAL_JWKS = Message("envoy.config.core.v3.DataSource (jwt_authn)", fields=(
    used("filename", attr="local_jwks", why="read at load"),
    used("inline_string", attr="local_jwks"),
    used("inline_bytes", attr="local_jwks", why="base64 in YAML/JSON"),
    used("environment_variable", attr="local_jwks", why="read at load"),
    refused("watched_directory", "reloading the keys when their directory changes"),
))
REQUIREMENT = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement", fields=(
    used("provider_name", attr="provider"),
    used("provider_and_audiences", attr="audiences"),
    used("requires_any", attr="children"),
    used("requires_all", attr="children"),
    used("allow_missing_or_failed", attr="failed"),
    used("allow_missing", attr="failed"),
    refused("extract_only_without_validation", "passing tokens on unverified"),
))
PROVIDER_AND_AUDIENCES = Message("envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences", fields=(
    used("provider_name", attr="provider"),
    used("audiences"),
))
REQUIREMENT_LIST = Message("envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList / AndList",
                           fields=(used("requirements", attr="children"),))
RULE = Message("envoy.extensions.filters.http.jwt_authn.v3.RequirementRule", fields=(
    used("match", attr="rules"),
    used("requires", attr="rules"),
    used("requirement_name", attr="rules"),
))
PER_ROUTE = Message(PER_ROUTE_PROTO, title="HTTP filter jwt_authn per route", model=PerRouteConfig, fields=(
    used("disabled", False),
    used("requirement_name", ""),
))


def _read_data_source(raw: Any, path: str) -> bytes:
    d = LOCAL_JWKS.read(raw, path)
    kind = d.oneof("filename", "inline_string", "inline_bytes", "environment_variable")
    if kind is None:
        return b""
    value = d.str(kind)
    if kind == "inline_string":
        return value.encode()
    if kind == "inline_bytes":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(d.at(kind), "not valid base64") from None
    if kind == "environment_variable":
        env = os.environ.get(value)
        if env is None:
            raise ConfigError(d.at(kind), f"environment variable {value!r} is not set")
        return env.encode()
    try:
        with open(value, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise ConfigError(d.at(kind), f"cannot read {value!r}: {e.strerror or e}") from None


def _remote(raw: Any, path: str, provider: str) -> RemoteJwks:
    r = REMOTE_JWKS.read(raw, path)
    u = HTTP_URI.read(r.value("http_uri", required=True), r.at("http_uri"))
    uri = u.str("uri", required=True)
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConfigError(u.at("uri"), f"Provider '{provider}' has an invalid URI: '{uri}'")
    cluster = u.str("cluster", required=True)
    if not cluster:
        raise ConfigError(u.at("cluster"), "must not be empty")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    cache = r.duration("cache_duration", _DEFAULT_CACHE_DURATION)
    if cache < 0.001:
        raise ConfigError(r.at("cache_duration"), "must be at least 1ms")
    return RemoteJwks(cluster, target.encode("latin-1"), parts.netloc.encode("latin-1"),
                      u.duration("timeout", required=True), cache)


def _header_name(value: str, path: str) -> bytes:
    if not value:
        raise ConfigError(path, "must not be empty")
    return header_bytes(value.lower(), path)


def _provider(name: str, raw: Any, path: str) -> JwtProvider:
    f = JWT_PROVIDER.read(raw, path)
    kind = f.oneof("remote_jwks", "local_jwks", required=True)
    local = remote = None
    if kind == "local_jwks":
        text = _read_data_source(f.value("local_jwks"), f.at("local_jwks"))
        if text:   # empty: no keys, and each token fails (Envoy loads it so)
            try:
                local = parse_jwks(text)
            except JwtError as e:
                raise ConfigError(f.at("local_jwks"), f"Provider '{name}' in jwt_authn config has "
                                  f"invalid local jwks: {e.status}") from None
    else:
        remote = _remote(f.value("remote_jwks"), f.at("remote_jwks"), name)
    headers = []
    for h in f.objs("from_headers", JWT_HEADER.names):
        headers.append((_header_name(h.str("name", ""), h.at("name")),
                        h.str("value_prefix", "").encode("latin-1")))
    claims = []
    for c in f.objs("claim_to_headers", CLAIM_TO_HEADER.names):
        header = c.str("header_name", "")
        claim = c.str("claim_name", "")
        segments = [PATH_SEGMENT.read(item, p).str("key", "") for item, p in c.list("claim_path")]
        if bool(claim) == bool(segments):
            raise ConfigError(c.path, f"Provider '{name}' has a claim_to_headers entry for header "
                              f"'{header}' which does not set exactly one of claim_name and claim_path")
        path = tuple(claim.split(".")) if claim else tuple(segments)
        claims.append((_header_name(header, c.at("header_name")), path))
    max_lifetime = None
    if f.bool("require_expiration", False):
        max_lifetime = float("inf")
    if f.has("max_lifetime"):
        max_lifetime = f.duration("max_lifetime")
    subjects = parse_string_matcher(f.value("subjects"), f.at("subjects")) if f.has("subjects") else None
    payload_header = f.str("forward_payload_header", "")
    normalize: tuple[str, ...] = ()
    if f.value("normalize_payload_in_metadata") is not None:
        n = NORMALIZE_PAYLOAD.read(f.value("normalize_payload_in_metadata"), f.at("normalize_payload_in_metadata"))
        normalize = n.strs("space_delimited_claims")
    cache_size, cache_token = 0, _MAX_CACHED_TOKEN
    if f.value("jwt_cache_config") is not None:
        cc = JWT_CACHE_CONFIG.read(f.value("jwt_cache_config"), f.at("jwt_cache_config"))
        cache_size = cc.int("jwt_cache_size", 0, min=0, max=2 ** 32 - 1) or _DEFAULT_JWT_CACHE_SIZE
        cache_token = cc.int("jwt_max_token_size", 0, min=0, max=2 ** 32 - 1) or _MAX_CACHED_TOKEN
    return JwtProvider(
        name=name,
        issuer=f.str("issuer", ""),
        audiences=frozenset(sanitize_audience(a) for a in f.strs("audiences")),
        local_jwks=local,
        remote_jwks=remote,
        forward=f.bool("forward", False),
        from_headers=tuple(headers),
        from_params=f.strs("from_params"),
        from_cookies=f.strs("from_cookies"),
        forward_payload_header=header_bytes(payload_header.lower(), f.at("forward_payload_header")) if payload_header else b"",
        pad_forward_payload_header=f.bool("pad_forward_payload_header", False),
        claim_to_headers=tuple(claims),
        clock_skew_seconds=f.int("clock_skew_seconds", 0, min=0, max=2 ** 32 - 1) or _DEFAULT_CLOCK_SKEW,
        clear_route_cache=f.bool("clear_route_cache", False),
        subjects=subjects,
        max_lifetime=max_lifetime,
        payload_in_metadata=f.str("payload_in_metadata", ""),
        header_in_metadata=f.str("header_in_metadata", ""),
        failed_status_in_metadata=f.str("failed_status_in_metadata", ""),
        space_delimited_claims=normalize,
        jwt_cache_size=cache_size,
        jwt_max_token_size=cache_token,
    )


def _empty(raw: Any, path: str) -> None:
    if not isinstance(raw, Mapping) or raw:
        raise ConfigError(path, "expected an empty object {}")


def _requirement(raw: Any, path: str, providers: Mapping[str, JwtProvider]) -> Any:
    f = REQUIREMENT.read(raw, path)
    kind = f.oneof("provider_name", "provider_and_audiences", "requires_any", "requires_all",
                   "allow_missing_or_failed", "allow_missing")
    if kind is None:
        return AllowAll()
    if kind in ("allow_missing_or_failed", "allow_missing"):
        _empty(f.value(kind), f.at(kind))
        return AllowMissing(failed=kind == "allow_missing_or_failed")
    if kind in ("provider_name", "provider_and_audiences"):
        audiences = None
        if kind == "provider_name":
            name = f.str(kind)
        else:
            p = PROVIDER_AND_AUDIENCES.read(f.value(kind), f.at(kind))
            name = p.str("provider_name", "")
            auds = p.strs("audiences")
            audiences = frozenset(sanitize_audience(a) for a in auds) if auds else None
        provider = providers.get(name)
        if provider is None:
            raise ConfigError(f.at(kind), f"Required provider ['{name}'] is not configured.")
        return ProviderRequirement(provider, audiences)
    lst = REQUIREMENT_LIST.read(f.value(kind), f.at(kind))
    items = lst.list("requirements", min_items=2)
    if len(items) < 2:
        raise ConfigError(lst.at("requirements"), "must have at least 2 item(s)")
    if kind == "requires_all":
        return AllRequirement(tuple(_requirement(item, p, providers) for item, p in items))
    children = []
    allow_missing_or_failed = allow_missing = False
    for item, p in items:
        child = _requirement(item, p, providers)
        if isinstance(child, AllowMissing):
            allow_missing_or_failed |= child.failed
            allow_missing |= not child.failed
        else:
            children.append(child)
    if not children:   # only allow_missing* inside: one of them verifies (Envoy's AnyVerifierImpl)
        children.append(AllowMissing(failed=allow_missing_or_failed))
    return AnyRequirement(tuple(children), allow_missing_or_failed, allow_missing)


def parse_jwt_authentication(raw: Mapping[str, Any], path: str) -> JwtAuthentication:
    f = JWT_AUTHENTICATION.read(raw, path)
    providers_raw = f.raw_obj("providers") or {}
    providers: dict[str, JwtProvider] = {}
    for name, value in providers_raw.items():
        providers[name] = _provider(name, value, f"{f.at('providers')}.{name}")
    req_map_raw = f.raw_obj("requirement_map") or {}
    requirement_map = {name: _requirement(value, f"{f.at('requirement_map')}.{name}", providers)
                       for name, value in req_map_raw.items()}
    names = ",".join(sorted(requirement_map))
    rules = []
    for item, p in f.list("rules"):
        r = RULE.read(item, p)
        match = parse_route_match(r.value("match", required=True), r.at("match"))
        kind = r.oneof("requires", "requirement_name")
        requirement = None
        if kind == "requires":
            requirement = _requirement(r.value("requires"), r.at("requires"), providers)
        elif kind == "requirement_name":
            rname = r.str("requirement_name")
            if rname not in requirement_map:
                raise ConfigError(r.at("requirement_name"),
                                  f"Wrong requirement_name: {rname}. It should be one of [{names}]")
            requirement = requirement_map[rname]
        rules.append((match, requirement))
    return JwtAuthentication(
        providers=tuple(providers.values()),
        rules=tuple(rules),
        requirement_map=requirement_map,
        bypass_cors_preflight=f.bool("bypass_cors_preflight", False),
        strip_failure_response=f.bool("strip_failure_response", False),
        stat_prefix=f.str("stat_prefix", ""),
    )


def parse_per_route(raw: Mapping[str, Any], path: str) -> PerRouteConfig:
    f = PER_ROUTE.read(raw, path)
    kind = f.oneof("disabled", "requirement_name", required=True)
    if kind == "disabled":
        if not f.bool("disabled"):
            raise ConfigError(f.at("disabled"), "must be true when set (or set requirement_name)")
        return PerRouteConfig(disabled=True)
    name = f.str("requirement_name")
    if not name:
        raise ConfigError(f.at("requirement_name"), "must not be empty")
    return PerRouteConfig(requirement_name=name)
