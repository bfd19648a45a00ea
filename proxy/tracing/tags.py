"""The tags of a request's spans, as Envoy's HttpTracerUtility sets them
(finalizeDownstreamSpan, finalizeUpstreamSpan), encoded as JSON object members.

A worker ends a span with a snapshot of the request's facts (`Facts`: the request's header
list, which nothing changes once the stream has ended, and a few scalars); the main thread
turns it into tags while it encodes the report. So the tag work is paid once, off the
request path, and straight into JSON text (no intermediate dict).

Server span tags: `http.url` (x-forwarded-proto, authority, the original path cut at
max_path_tag_length), `http.method`, `downstream_cluster`, `user_agent`, `http.protocol`,
`peer.address`, `http.status_code`, `response_size`, `request_size`, `response_flags`,
`guid:x-request-id`, `guid:x-client-trace-id`, the custom tags (the HCM's, then the route's),
`upstream_cluster` and `upstream_cluster.name` when an upstream host was chosen, `error` on
5xx or no response. The exporter adds `component`, `node_id` and `zone` (the process's).
Upstream span tags: `component`, `http.protocol`, `http.status_code`, `peer.address`,
`upstream_address`, `response_flags`, `upstream_cluster`, `upstream_cluster.name`, `error`.

The OpenTelemetry tracer sets the same tags as span attributes (`request_attributes`,
`upstream_attributes`: (key, value) pairs in the order Envoy 1.40's sends them, a later tag of
the same key replacing the earlier's value, as its Span::setTag), with `node_id` and `zone`
(even empty) first.

Must not: do I/O, or write to the facts it reads.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _q
from typing import NamedTuple

__all__ = ["Facts", "request_tags", "upstream_tags", "request_attributes", "upstream_attributes"]


class Facts(NamedTuple):
    fields: tuple             # the request's header fields (name, value) as it ended
    authority: bytes
    path: bytes
    method: bytes
    protocol: str
    peer: str                 # the downstream's direct address (IP)
    code: int | None          # the response status, None without a response
    bytes_sent: int
    bytes_received: int
    flags: tuple              # response flags (short names)
    cluster: str | None
    host: str | None          # the upstream host "ip:port" when one was chosen
    route_tracing: object     # the route's RouteTracing or None
    config: object            # the HCM's TracingConfig


_SERVER = ('"http.url":%s,"http.method":%s,"downstream_cluster":%s,"user_agent":%s,'
           '"http.protocol":%s,"peer.address":%s,"http.status_code":"%d","response_size":"%d",'
           '"request_size":"%d","response_flags":%s')
_UPSTREAM = ('"component":"proxy","http.protocol":%s,"http.status_code":"%d","peer.address":%s,'
             '"upstream_address":%s,"response_flags":%s,"upstream_cluster":%s,'
             '"upstream_cluster.name":%s')


def _text(v: bytes) -> str:
    return _q(v.decode("latin-1"))


def request_tags(f: Facts) -> str:
    get = dict(reversed(f.fields)).get
    path = get(b"x-envoy-original-path") or f.path
    url = get(b"x-forwarded-proto", b"") + b"://" + f.authority + path[:f.config.max_path_tag_length]
    code = f.code or 0
    text = _SERVER % (_text(url), _text(f.method),
                      _text(get(b"x-envoy-downstream-service-cluster") or b"-"),
                      _text(get(b"user-agent") or b"-"), _q(f.protocol), _q(f.peer), code,
                      f.bytes_sent, f.bytes_received, _q(",".join(f.flags) or "-"))
    rid = get(b"x-request-id")
    if rid is not None:
        text += ',"guid:x-request-id":' + _text(rid)
    client = get(b"x-client-trace-id")
    if client is not None:
        text += ',"guid:x-client-trace-id":' + _text(client)
    if f.config.custom_tags:
        text += _custom(f.config.custom_tags, get)
    if f.route_tracing is not None and f.route_tracing.custom_tags:
        text += _custom(f.route_tracing.custom_tags, get)
    if f.cluster is not None and f.host is not None:
        c = _q(f.cluster)
        text += ',"upstream_cluster":%s,"upstream_cluster.name":%s' % (c, c)
    if not code or code >= 500:
        text += ',"error":"true"'
    return text


def upstream_tags(f: Facts) -> str:
    code = f.code or 0
    host, cluster = _q(f.host or ""), _q(f.cluster or "")
    text = _UPSTREAM % (_q(f.protocol), code, host, host, _q(",".join(f.flags) or "-"),
                        cluster, cluster)
    if not code or code >= 500:
        text += ',"error":"true"'
    return text


def _custom(custom, get) -> str:
    out = ""
    for t in custom:
        if t.header is None:
            value = t.value
        else:
            raw = get(t.header)
            value = raw.decode("latin-1") if raw else t.value
        if value:
            out += "," + _q(t.tag) + ":" + _q(value)
    return out


def request_attributes(f: Facts, node_id: str, zone: str) -> list[tuple[str, str]]:
    """The server span's attributes, as Envoy's OpenTelemetry span carries them."""
    get = dict(reversed(f.fields)).get
    attrs = {"node_id": node_id, "zone": zone}
    rid = get(b"x-request-id")
    if rid is not None:
        attrs["guid:x-request-id"] = rid.decode("latin-1")
    client = get(b"x-client-trace-id")
    if client is not None:
        attrs["guid:x-client-trace-id"] = client.decode("latin-1")
    path = get(b"x-envoy-original-path") or f.path
    url = get(b"x-forwarded-proto", b"") + b"://" + f.authority + path[:f.config.max_path_tag_length]
    code = f.code or 0
    attrs["http.url"] = url.decode("latin-1")
    attrs["http.method"] = f.method.decode("latin-1")
    attrs["downstream_cluster"] = (get(b"x-envoy-downstream-service-cluster") or b"-").decode("latin-1")
    attrs["user_agent"] = (get(b"user-agent") or b"-").decode("latin-1")
    attrs["http.protocol"] = f.protocol
    attrs["peer.address"] = f.peer
    attrs["request_size"] = str(f.bytes_received)
    attrs["response_size"] = str(f.bytes_sent)
    attrs["component"] = "proxy"
    if f.cluster is not None and f.host is not None:
        attrs["upstream_cluster"] = attrs["upstream_cluster.name"] = f.cluster
    attrs["http.status_code"] = str(code)
    attrs["response_flags"] = ",".join(f.flags) or "-"
    if not code or code >= 500:
        attrs["error"] = "true"
    for custom in (f.config.custom_tags,
                   f.route_tracing.custom_tags if f.route_tracing is not None else ()):
        for t in custom:
            if t.header is None:
                value = t.value
            else:
                raw = get(t.header)
                value = raw.decode("latin-1") if raw else t.value
            if value:
                attrs[t.tag] = value
    return list(attrs.items())


def upstream_attributes(f: Facts) -> list[tuple[str, str]]:
    """The router's upstream (CLIENT) span's attributes."""
    code = f.code or 0
    host, cluster = f.host or "", f.cluster or ""
    attrs = [("http.protocol", f.protocol), ("upstream_address", host), ("peer.address", host),
             ("component", "proxy"), ("upstream_cluster", cluster),
             ("upstream_cluster.name", cluster), ("http.status_code", str(code)),
             ("response_flags", ",".join(f.flags) or "-")]
    if not code or code >= 500:
        attrs.append(("error", "true"))
    return attrs
