"""`envoy.filters.http.jwt_authn`: requests must carry JSON Web Tokens that verify, as Envoy's
JWT authentication filter decides it.

Config (jwt_authn_config.py): `providers` (issuer, audiences, subjects, require_expiration /
max_lifetime, `local_jwks` or `remote_jwks` fetched from a cluster and kept `cache_duration`,
from_headers / from_params / from_cookies, forward, forward_payload_header (padded or not),
claim_to_headers, clock_skew_seconds, clear_route_cache), `rules` (a RouteMatch picks a
requirement: provider_name, provider_and_audiences, requires_any, requires_all, allow_missing,
allow_missing_or_failed; the first match wins, none: nothing required), `requirement_map` with
the per-route `PerRouteConfig` (`requirement_name`, `disabled`), `bypass_cors_preflight`,
`strip_failure_response`, `stat_prefix`. Token checks are jwt_verify.py's.

Decisions as Envoy's (filter.cc, verifier.cc, authenticator.cc, extractor.cc):
- Tokens are taken from every location the requirement's providers name (by default
  `Authorization: Bearer <token>` and the `access_token` query parameter); every token found must
  verify (the last found is checked first, and the first failure decides); none: "Jwt is missing".
- A failure is a 401 with jwt_verify_lib's message as body and `www-authenticate: Bearer
  realm="<scheme>://<host><path>"` (`, error="invalid_token"` unless the token is missing); a
  token whose audiences are not allowed gets 403. `strip_failure_response`: no body, no header.
  Details `jwt_authn_access_denied{<message with spaces as _>}`.
- A good token: its payload (base64url as sent) in `forward_payload_header`, its claims in
  `claim_to_headers` (strings, numbers, booleans; appended), and, unless `forward`, the header or
  query parameter it came in removed. Every provider's payload and claim headers are first
  removed from every request, whatever its route requires (a client cannot send its own).
- Remote keys: fetched from the cluster when a request needs them (GET on the URI's path through
  the worker's async client); each worker keeps what it fetched for `cache_duration` (Envoy's
  per-worker JWKS cache); a fetch that fails (no answer, not 200, keys that do not parse) gives
  "Jwks remote fetch is failed". Stats `jwks_fetch_success` / `jwks_fetch_failed`.
- `payload_in_metadata` / `header_in_metadata`: a good token's payload (its
  `normalize_payload_in_metadata` claims split on spaces) and header in the stream's dynamic
  metadata under `envoy.filters.http.jwt_authn`, where a Lua filter after this one reads them;
  `failed_status_in_metadata`: a failure's `{code, message}` (jwt_verify_lib's Status number
  and text) from the provider the token was checked for, else the only provider (as Envoy).
- `jwt_cache_config` (off by default, as Envoy): each worker keeps, per provider, up to
  `jwt_cache_size` verified tokens (LRU, tokens up to `jwt_max_token_size`); a token found there
  skips parsing and the signature check, not the issuer, time, audience, subject and lifetime
  checks; one expired (60 s skew) is dropped. Only a named provider's tokens are cached.
  (jwt_cache.py: with the token the entry keeps what those checks need, so that the usual
  requirement, one provider at the root of its rule, passes a cached token by one lookup and
  one time comparison, with the same outcome, stats and effects.)
Stats `http.<stat_prefix>.jwt_authn.[<filter stat_prefix>.]{allowed,denied,cors_preflight_bypassed,
jwks_fetch_success,jwks_fetch_failed,jwt_cache_hit,jwt_cache_miss}` (a named provider's token
looked up in its cache; without one every lookup is a miss, as Envoy counts it).

Thread affinity: the factory's compiled verifiers (and their Shortcuts) are immutable and shared;
each worker's JWKS cache and token caches belong to it (no lock); a filter and its verification
state belong to the stream's worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from functools import partial

from ...config.registry import Extension, register
from ...router.matchers import RequestView
from ..async_client import AsyncRequest, AsyncResponse
from ..filter import FilterHeadersStatus, PassThroughFilter
from . import jwt_verify as jv
from . import jwt_cache
from .jwt_cache import CachedJwt, Shortcut
from .jwt_extract import Extractor, Token, remove_token
from .jwt_authn_config import (NAME, PER_ROUTE_PROTO, PROTO, AllowAll, AllowMissing, AllRequirement,
                               AnyRequirement, JwtAuthentication, JwtProvider, ProviderRequirement,
                               parse_jwt_authentication, parse_per_route)

__all__ = ["JwtAuthnFactory"]

_CONTINUE = FilterHeadersStatus.CONTINUE
_HOLD = FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK
_MAX_URI_PATH = 256   # Envoy's MaximumUriLength for the realm
_OK = jv.OK
_time = time.time


# -- the requirement tree, compiled (Verifier) ------------------------------------------------

class _Node:
    """One verifier of the tree; `parent` is set once while building. Immutable afterwards."""

    __slots__ = ("parent", "kind", "provider", "audiences", "extractor", "children",
                 "allow_missing_or_failed", "allow_missing", "failed", "direct")

    def __init__(self, kind: str, parent) -> None:
        self.kind = kind
        self.parent = parent
        self.provider = None
        self.audiences = None
        self.extractor = None
        self.children: tuple = ()
        self.allow_missing_or_failed = self.allow_missing = self.failed = False
        self.direct = None   # a root provider requirement's Shortcut (jwt_cache.py), if any


def _compile(req, providers: tuple[JwtProvider, ...], parent=None) -> _Node:
    if isinstance(req, ProviderRequirement):
        n = _Node("provider", parent)
        n.provider = req.provider
        n.audiences = req.audiences
        n.extractor = Extractor((req.provider,))
    elif isinstance(req, AllowMissing):
        n = _Node("allow", parent)
        n.failed = req.failed
        n.extractor = Extractor(providers)
    elif isinstance(req, AnyRequirement):
        n = _Node("any", parent)
        n.allow_missing_or_failed = req.allow_missing_or_failed
        n.allow_missing = req.allow_missing
        n.children = tuple(_compile(c, providers, n) for c in req.children)
    elif isinstance(req, AllRequirement):
        n = _Node("all", parent)
        n.children = tuple(_compile(c, providers, n) for c in req.children)
    else:
        assert isinstance(req, AllowAll), req
        n = _Node("none", parent)
    if parent is None and n.kind == "provider":
        n.direct = Shortcut.of(n.provider, n.audiences, n.extractor)
    return n


class _State:
    __slots__ = ("completed", "done_children", "status")

    def __init__(self) -> None:
        self.completed = False
        self.done_children = 0
        self.status = _OK


# -- factory, per worker ------------------------------------------------------------------------

class JwtAuthnFactory:
    def __init__(self, config: JwtAuthentication, name: str) -> None:
        self.config = config
        self.name = name
        compiled: dict[int, _Node] = {}

        def node(req):
            if req is None:
                return None
            if id(req) not in compiled:
                compiled[id(req)] = _compile(req, config.providers)
            return compiled[id(req)]

        self.rules = tuple((match, node(req)) for match, req in config.rules)
        # One rule matching a plain prefix (the target's bytes say it: table.py): (prefix, node).
        self.lone_rule = None
        if len(self.rules) == 1 and self.rules[0][0].raw_prefix is not None:
            self.lone_rule = (self.rules[0][0].raw_prefix, self.rules[0][1])
        self.named = {name: node(req) for name, req in (config.requirement_map or {}).items()}
        self.single_provider = config.providers[0] if len(config.providers) == 1 else None
        self.by_issuer: dict[str, JwtProvider] = {}
        for p in config.providers:
            self.by_issuer.setdefault(p.issuer, p)
        # Envoy 1.40 removes every provider's payload and claim headers from each request
        # first, whatever the route requires (a client cannot send them).
        self.sanitize = Extractor(config.providers).sanitize
        self.fetches = any(p.remote_jwks is not None for p in config.providers)
        written = set(self.sanitize)
        for p in config.providers:
            written.update(name for name, _ in p.from_headers)
            if not p.from_headers and not p.from_params and not p.from_cookies:
                written.add(b"authorization")
        self.writes_content_type = b"content-type" in written

    def find_by_issuer(self, issuer: str) -> JwtProvider | None:
        p = self.by_issuer.get(issuer)
        if p is None and issuer:
            return self.by_issuer.get("")
        return p

    def for_worker(self, ctx) -> WorkerJwtAuthn:
        return WorkerJwtAuthn(self, ctx)


class WorkerJwtAuthn:
    decoder = True
    encoder = False

    def __init__(self, factory: JwtAuthnFactory, ctx) -> None:
        self.name = factory.name
        self.factory = factory
        self.config = factory.config
        self.worker = ctx.worker
        prefix = f"http.{ctx.config.stat_prefix}.jwt_authn"
        if factory.config.stat_prefix:
            prefix += "." + factory.config.stat_prefix
        scope = ctx.worker.stats.scope(prefix)
        self.allowed = scope.counter("allowed")
        self.denied = scope.counter("denied")
        self.cors_preflight_bypassed = scope.counter("cors_preflight_bypassed")
        self.jwks_fetch_success = scope.counter("jwks_fetch_success")
        self.jwks_fetch_failed = scope.counter("jwks_fetch_failed")
        # Envoy looks each token of a named provider up in that provider's cache of verified
        # tokens (per worker); without jwt_cache_config there is none and every lookup misses.
        self.jwt_cache_hit = scope.counter("jwt_cache_hit")
        self.jwt_cache_miss = scope.counter("jwt_cache_miss")
        # (Worker-owned, no lock: only this worker's thread reads or changes them.)
        self.jwt_caches: dict[str, OrderedDict[bytes, CachedJwt]] = {
            p.name: OrderedDict() for p in factory.config.providers if p.jwt_cache_size}
        # This worker's fetched keys: provider name -> (Jwks, monotonic expiry). Worker-owned.
        self.remote_jwks: dict[str, tuple[jv.Jwks, float]] = {}
        # The sanitized header names (payload and claim headers of every provider).
        self.sanitize = factory.sanitize
        self.bypass_cors_preflight = factory.config.bypass_cors_preflight
        self.lone_rule = factory.lone_rule
        # Whether a header this filter removes or adds may be the content-type: then the
        # stream notes first whether the request arrived as gRPC (keeps_request_content_type).
        self.notes_grpc = factory.writes_content_type
        # One class of filter per factory (filter.py): with a remote JWKS a filter may wait
        # on a fetch, which its on_destroy cancels; without one nothing outlives decode_headers.
        cls = _FetchingJwtAuthnFilter if factory.fetches else JwtAuthnFilter
        self.create = partial(cls, self)

    def cached_jwt(self, provider: JwtProvider, token: bytes) -> jv.Jwt | None:
        """JwtCache::lookup: a verified token of this provider, unless expired (60 s skew)."""
        cache = self.jwt_caches.get(provider.name)
        return None if cache is None else jwt_cache.lookup(cache, token, int(time.time()))

    def cache_jwt(self, provider: JwtProvider, token: bytes, jwt: jv.Jwt, audiences, adds: tuple) -> None:
        cache = self.jwt_caches.get(provider.name)
        if cache is not None:
            jwt_cache.insert(cache, provider, token, jwt, audiences, adds)

    def jwks_for(self, provider: JwtProvider) -> jv.Jwks | None:
        if provider.local_jwks is not None:
            return provider.local_jwks
        cached = self.remote_jwks.get(provider.name)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        return None


# -- one token check (Authenticator) -----------------------------------------------------------

class _Authenticator:
    """Checks the tokens one verifier node found, one at a time (a remote key fetch may come
    between), then tells the node."""

    __slots__ = ("f", "node", "provider", "audiences", "allow_failed", "allow_missing", "tokens",
                 "current", "jwt", "using", "fetch", "cache_hit")

    def __init__(self, f: JwtAuthnFilter, node: _Node) -> None:
        self.f = f
        self.node = node
        self.provider = node.provider           # None: allow_missing*: by the token's issuer
        self.audiences = node.audiences
        self.allow_failed = node.kind == "allow" and node.failed
        self.allow_missing = node.kind == "allow"
        self.tokens: list[Token] = []
        self.current: Token | None = None
        self.jwt: jv.Jwt | None = None
        self.using: JwtProvider | None = None
        self.fetch: AsyncRequest | None = None
        self.cache_hit = False

    def verify(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        if not tokens:
            self._done(jv.JWT_MISSED)
            return
        self._start()

    def _start(self) -> None:
        token = self.current = self.tokens.pop()
        wf = self.f.wf
        jwt = None
        if self.provider is not None:
            self.using = self.provider
            jwt = wf.cached_jwt(self.provider, token.token) if wf.jwt_caches else None
            if jwt is not None:
                wf.jwt_cache_hit.value += 1
            else:
                wf.jwt_cache_miss.value += 1
        self.cache_hit = jwt is not None
        if jwt is None:
            try:
                jwt = jv.parse_jwt(token.token)
            except jv.JwtError as e:
                return self._done(e.status)
        self.jwt = jwt
        if not token.checker.allows(jwt.iss):
            return self._done(jv.JWT_UNKNOWN_ISSUER)
        provider = self.provider or wf.factory.find_by_issuer(jwt.iss)
        if provider is None:
            return self._done(jv.JWT_UNKNOWN_ISSUER)
        self.using = provider
        now = int(time.time())
        try:
            jv.check_time(jwt, now, provider.clock_skew_seconds)
        except jv.JwtError as e:
            return self._done(e.status)
        allowed = self.audiences if self.audiences is not None else provider.audiences
        if not jv.audiences_allowed(allowed, jwt.audiences):
            return self._done(jv.JWT_AUDIENCE_NOT_ALLOWED)
        if provider.subjects is not None and not provider.subjects.match(jwt.sub):
            return self._done(jv.JWT_VERIFICATION_FAIL)
        if provider.max_lifetime is not None and (not jwt.exp or jwt.exp - now >= provider.max_lifetime):
            return self._done(jv.JWT_VERIFICATION_FAIL)
        if self.cache_hit:
            return self._good()
        jwks = wf.jwks_for(provider)
        if jwks is not None:
            return self._verify_key(jwks)
        remote = provider.remote_jwks
        if remote is None:
            return self._done(jv.JWKS_NO_VALID_KEYS)
        self.fetch = AsyncRequest(wf.worker, remote.cluster, b"GET", remote.path, remote.authority,
                                  [], b"", remote.timeout, self._on_jwks)
        self.fetch.send()

    def _on_jwks(self, response: AsyncResponse) -> None:
        self.fetch = None
        wf = self.f.wf
        provider = self.using
        jwks = None
        if not response.local and response.status == 200 and response.body:
            try:
                jwks = jv.parse_jwks(response.body)
            except jv.JwtError:
                jwks = None
        if jwks is None:
            wf.jwks_fetch_failed.value += 1
            return self._done(jv.JWKS_FETCH_FAIL)
        wf.jwks_fetch_success.value += 1
        wf.remote_jwks[provider.name] = (jwks, time.monotonic() + provider.remote_jwks.cache_duration)
        self._verify_key(jwks)

    def _verify_key(self, jwks: jv.Jwks) -> None:
        try:
            jv.verify_signature(self.jwt, jwks)
        except jv.JwtError as e:
            return self._done(e.status)
        self._good()

    def _good(self) -> None:
        provider = self.using
        jwt = self.jwt
        head = self.f.head
        adds = []
        if provider.forward_payload_header:
            payload = jwt.payload_b64
            if provider.pad_forward_payload_header:
                payload += b"=" * (-len(payload) % 4)
            adds.append((provider.forward_payload_header, payload))
        added = False
        for header, path in provider.claim_to_headers:
            value = _claim_text(jwt.payload, path)
            if value:
                adds.append((header, value.encode("utf-8")))
                added = True
        head.headers.fields.extend(adds)   # (Headers.add, in order)
        if not provider.forward:
            remove_token(head, self.current)
        if provider.header_in_metadata:
            self.f.extracted[provider.header_in_metadata] = jwt.header
        if provider.payload_in_metadata:
            self.f.extracted[provider.payload_in_metadata] = _normalized(jwt.payload, provider)
        if (added or provider.payload_in_metadata) and provider.clear_route_cache:
            self.f.cb.clear_route_cache()
        if self.provider is not None and not self.cache_hit:
            allowed = self.audiences if self.audiences is not None else provider.audiences
            self.f.wf.cache_jwt(provider, self.current.token, jwt, allowed, tuple(adds))
        self._done(_OK)

    def _done(self, status: str) -> None:
        if status != _OK:
            # failed_status_in_metadata of the provider this token was being checked for (a
            # named one, or the one its issuer found), else of the only provider (Envoy's
            # jwks_data_, then getSingleProvider()).
            provider = self.using or self.f.wf.factory.single_provider
            if provider is not None and provider.failed_status_in_metadata:
                self.f.extracted[provider.failed_status_in_metadata] = {
                    "code": str(jv.STATUS_CODES.get(status, 26)), "message": status}
        if (status != _OK and not self.allow_failed and not self.allow_missing) or not self.tokens:
            self.tokens = []
            if self.allow_failed or (self.allow_missing and status == jv.JWT_MISSED):
                status = _OK
            self.f.node_complete(self.node, status)
            return
        self._start()

    def cancel(self) -> None:
        if self.fetch is not None:
            self.fetch.cancel()
            self.fetch = None


def _normalized(payload: dict, provider: JwtProvider) -> dict:
    """The payload for dynamic metadata: each of `space_delimited_claims` that is a string
    becomes the list of its space-separated words (Envoy's NormalizePayload)."""
    claims = provider.space_delimited_claims
    if not claims:
        return payload
    out = dict(payload)
    for claim in claims:
        value = out.get(claim)
        if isinstance(value, str):
            out[claim] = [w for w in value.split(" ") if w]
    return out


def _claim_text(payload: dict, path: tuple[str, ...]) -> str:
    """The claim as Envoy copies it to a header: strings as they are, numbers as integers when
    whole (else C's %f), booleans as true/false; anything else is not copied."""
    value = payload
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return ""
        value = value[key]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if 0 <= value < 2 ** 64 and float(value).is_integer():
            return str(int(value))
        return "%f" % value
    return ""


# -- the filter -------------------------------------------------------------------------------

def _is_cors_preflight(head) -> bool:
    return (head.method == b"OPTIONS" and bool(head.headers.get(b"origin"))
            and bool(head.headers.get(b"access-control-request-method")))


def _details(message: str) -> str:
    return "jwt_authn_access_denied{%s}" % "_".join(message.split(" "))


class JwtAuthnFilter(PassThroughFilter):
    """One request's check. A request the usual requirement passes from the cache (Shortcut)
    ends in decode_headers with nothing made; the whole check's state (`head`, `states`,
    `auths`, `uri`, `extracted`) is set by `_begin` when a request takes that path."""

    __slots__ = ("cb", "wf", "head", "states", "auths", "stopped", "state", "uri", "extracted")
    keeps_request_content_type = True   # (filter.py; `notes_grpc` when it may write it)

    def __init__(self, wf: WorkerJwtAuthn, callbacks) -> None:
        self.cb = callbacks
        self.wf = wf
        self.stopped = False
        self.state = 0      # 0 calling, 1 complete, 2 responded

    def _begin(self, head, first: dict | None) -> None:
        """The whole check's state. The realm is the request as it came (a good token may be
        removed from its query before another fails): what it is made of is kept now, the
        text only on a failure. `first`: each header name's first value, when known."""
        self.head = head
        self.states: dict[int, _State] = {}
        self.auths: list[_Authenticator] = []
        self.extracted: dict[str, dict] = {}   # payload/header_in_metadata of good tokens
        if first is None:
            first = dict(reversed(head.headers.fields))   # each name's first value, in C
        self.uri = (first.get(b"x-forwarded-proto"), head.authority,
                    first.get(b"x-envoy-original-path") or head.path)

    def decode_headers(self, head, end_stream: bool) -> int:
        wf = self.wf
        if wf.notes_grpc:
            self.cb.note_request_grpc()
        fields = head.headers.fields
        names = dict(fields)            # (in C) each name's last value
        if len(names) != len(fields):   # a name twice: `names` says too little
            names = None
        sanitize = wf.sanitize
        if sanitize and (names is None or not names.keys().isdisjoint(sanitize)):  # (looks up the few)
            before = len(fields)
            head.headers.remove_many(sanitize)
            fields = head.headers.fields
            if len(fields) != before:
                names = None
        if wf.bypass_cors_preflight and _is_cors_preflight(head):
            wf.cors_preflight_bypassed.value += 1
            self._complete(_OK)
            return _CONTINUE
        per_route = self.cb.per_filter_config(wf.name)
        if per_route is not None:
            if per_route.disabled:
                node = None
            else:
                node = wf.factory.named.get(per_route.requirement_name)
                if node is None:
                    cfg = wf.config
                    msg = (f"Wrong requirement_name: {per_route.requirement_name}. "
                           f"It should be one of [{cfg.requirement_names}]")
                    wf.denied.value += 1
                    self.state = 2
                    body = b"" if cfg.strip_failure_response else \
                        ("Failed JWT authentication: " + msg).encode()
                    self.cb.send_local_reply(403, body, None, _details(msg))
                    return FilterHeadersStatus.STOP_ITERATION
        elif wf.lone_rule is not None:   # one rule, a plain prefix (the usual)
            prefix, node = wf.lone_rule
            if not head.path.startswith(prefix):
                node = None
        else:
            node = None
            view = None
            for match, rule_node in wf.factory.rules:
                prefix = match.raw_prefix   # a plain prefix: the target's bytes say it (table.py)
                if prefix is not None:
                    if head.path.startswith(prefix):
                        node = rule_node
                        break
                    continue
                if view is None:
                    view = RequestView(head)
                if match.matches(view):
                    node = rule_node
                    break
        if node is None:
            self._complete(_OK)
            return _CONTINUE
        direct = node.direct
        if direct is not None and names is not None:
            # The usual requirement, its token cached (jwt_cache.py): the whole check's
            # outcome and effects when every condition below holds, else the whole check.
            value = names.get(direct.header)
            if value is not None and value.startswith(direct.prefix):
                # (A cached token begins with a base64url character or a dot: a value that
                # does not there is no key of the cache, so this slice is what extract takes.
                # A prefix further in: the whole check finds it.)
                token = value[direct.skip:]
                cache = wf.jwt_caches[direct.cache]
                entry = cache.get(token)
                if (entry is not None and entry.lo <= _time() < entry.hi
                        and entry.audiences is direct.audiences
                        and not (direct.params and head.path.find(b"?") >= 0)   # (`in`: a TypeError inside)
                        and not (direct.cookies and b"cookie" in names)):
                    cache.move_to_end(token)       # (LRU, as JwtCache::lookup)
                    wf.jwt_cache_hit.value += 1
                    if not direct.forward:
                        try:
                            fields.remove((direct.header, value))   # (its only field: `names`)
                        except ValueError:   # (a field another filter made a list, not a tuple)
                            head.headers.remove(direct.header)
                            fields = head.headers.fields
                    fields.extend(entry.adds)       # the payload and claim headers, in order
                    wf.allowed.value += 1
                    self.state = 1
                    return _CONTINUE
        self._begin(head, names)
        self._verify(node)
        if self.state == 1:
            return _CONTINUE
        if self.state == 2:
            return FilterHeadersStatus.STOP_ITERATION
        self.stopped = True
        return _HOLD

    def _realm(self) -> bytes:
        proto, authority, path = self.uri
        return b'Bearer realm="%s://%s%s"' % (proto or b"", authority, path[:_MAX_URI_PATH])

    # -- the verifier tree ---------------------------------------------------------------------
    def _state(self, node: _Node) -> _State:
        s = self.states.get(id(node))
        if s is None:
            s = self.states[id(node)] = _State()
        return s

    def _verify(self, node: _Node) -> None:
        kind = node.kind
        if kind in ("any", "all"):
            for child in node.children:
                if self._state(node).completed:
                    return
                self._verify(child)
            return
        if kind == "none":
            self._complete_with(node, _OK)
            return
        auth = _Authenticator(self, node)
        # (Envoy 1.40 removed the providers' payload and claim headers in decode_headers.)
        auth.verify(node.extractor.extract(self.head))
        if not self._state(node).completed:
            self.auths.append(auth)

    def node_complete(self, node: _Node, status: str) -> None:
        """BaseVerifierImpl / Any / All onComplete."""
        s = self._state(node)
        if s.completed:
            return
        kind = node.kind
        if kind == "any":
            if status == _OK:
                s.completed = True
                return self._complete_with(node, status)
            s.done_children += 1
            if s.done_children < len(node.children):
                return
            final = jv.JWT_MISSED
            for child in node.children:
                cs = self._state(child).status
                if (cs != jv.JWT_MISSED and cs != jv.JWT_UNKNOWN_ISSUER) or final == jv.JWT_MISSED:
                    final = cs
            if node.allow_missing_or_failed:
                final = _OK
            elif node.allow_missing and final == jv.JWT_MISSED:
                final = _OK
            s.completed = True
            return self._complete_with(node, final)
        if kind == "all":
            s.done_children += 1
            if s.done_children == len(node.children) or status != _OK:
                s.completed = True
                self._complete_with(node, status)
            return
        s.completed = True
        self._complete_with(node, status)

    def _complete_with(self, node: _Node, status: str) -> None:
        if node.parent is not None:
            self._state(node).status = status
            self.node_complete(node.parent, status)
            return
        if self.extracted:   # Envoy's setExtractedData, whatever the outcome
            info = self.cb.stream_info
            md = getattr(info, "dynamic_metadata", None)
            if md is None:
                md = info.dynamic_metadata = {}
            md.setdefault(NAME, {}).update(self.extracted)
        self._complete(status)
        self._cancel()

    # -- the outcome ---------------------------------------------------------------------------
    def _complete(self, status: str) -> None:
        if self.state == 2:
            return
        wf = self.wf
        if status != _OK:
            wf.denied.value += 1
            self.state = 2
            code = 403 if status == jv.JWT_AUDIENCE_NOT_ALLOWED else 401
            if wf.config.strip_failure_response:
                self.cb.send_local_reply(code, b"", None, _details(status))
                return
            realm = self._realm()
            if status != jv.JWT_MISSED:
                realm += b', error="invalid_token"'
            self.cb.send_local_reply(code, status.encode(), None, _details(status),
                                     [(b"www-authenticate", realm)])
            return
        wf.allowed.value += 1
        self.state = 1
        if self.stopped:
            self.cb.continue_decoding()

    def _cancel(self) -> None:
        auths, self.auths = self.auths, []
        for auth in auths:
            auth.cancel()


class _FetchingJwtAuthnFilter(JwtAuthnFilter):
    """The filter of a config with a remote JWKS: a request may wait on a key fetch, which
    ends with the stream."""

    __slots__ = ()

    def __init__(self, wf: WorkerJwtAuthn, callbacks) -> None:
        super().__init__(wf, callbacks)
        self.auths = []

    def on_destroy(self) -> None:
        self.state = 2
        self._cancel()


register(Extension(
    category="http_filter",
    name=NAME,
    proto=PROTO,
    parse=parse_jwt_authentication,
    factory=JwtAuthnFactory,
    per_route_proto=PER_ROUTE_PROTO,
    parse_per_route=parse_per_route,
))
