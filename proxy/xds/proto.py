"""xDS protobuf messages: DiscoveryRequest out, DiscoveryResponse in, resources as plain data.

Envoy's v3 message classes come from the `xds-protos` package (installed with `--no-deps`: its
metadata asks for grpcio, which ftproxy never imports) on top of `protobuf`. On a free-threaded
build the upb C backend would turn the GIL back on, so proxy/grpc/protobuf_env.py (the one place
that decides) selects protobuf's pure-Python backend before the first protobuf import there; a
GIL build keeps the fast upb backend. Decoding happens on the main thread only.

Resources become dicts with `json_format.MessageToDict(preserving_proto_field_name=True)`
(proto3 JSON: 64-bit integers as strings, enums by name, durations as "1.500s", `@type` in
each Any) and then go through the SAME validators as a file's resources, so a bad push is
refused with the message a bad file gets. An Any whose type is not loaded yet is resolved by
importing the `_pb2` modules of its proto package (one directory of xds-protos).

Must not: do I/O beyond those imports. Thread affinity: main thread only.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from ..grpc.protobuf_env import implementation  # before protobuf: the backend on 3.14t

from google.protobuf import json_format  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.config.core.v3 import base_pb2  # noqa: E402

# Loaded up front: the types of LDS/RDS/CDS/EDS and the filters nearly every listener has.
from envoy.config.listener.v3 import listener_pb2  # noqa: E402,F401
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402,F401
from envoy.config.route.v3 import route_pb2  # noqa: E402,F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E402,F401
    http_connection_manager_pb2)
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402,F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: E402,F401

__all__ = ["DecodeError", "ProtoResponse", "DeltaProtoResponse", "decode_response", "decode_delta_response",
           "encode_request", "encode_delta_request", "implementation",
           "is_heartbeat", "node_message", "resource_to_dict", "wrapper_info"]

_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
_INTERNAL = 13   # google.rpc.Code INTERNAL: what Envoy puts in a NACK's error_detail


class ProtoResponse:
    """A decoded DiscoveryResponse: its header fields and its resources still packed."""

    __slots__ = ("version_info", "type_url", "nonce", "resources")

    def __init__(self, version_info: str, type_url: str, nonce: str, resources: list) -> None:
        self.version_info = version_info
        self.type_url = type_url
        self.nonce = nonce
        self.resources = resources   # google.protobuf.Any messages


def decode_response(data: bytes) -> ProtoResponse:
    """A DiscoveryResponse's bytes (raises DecodeError when they are not one)."""
    msg = discovery_pb2.DiscoveryResponse()
    msg.ParseFromString(data)
    return ProtoResponse(msg.version_info, msg.type_url, msg.nonce, list(msg.resources))


def _load_package_of(type_url: str) -> bool:
    """Import the `_pb2` modules of the proto package holding `type_url`'s message: True if
    something new was imported."""
    full = type_url.rsplit("/", 1)[-1]
    parts = full.split(".")
    for cut in range(len(parts) - 1, 0, -1):      # the package, or an outer message's package
        pkg = ".".join(parts[:cut])
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        paths = list(getattr(mod, "__path__", ()))
        loaded = False
        for d in paths:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                if name.endswith("_pb2.py"):
                    modname = f"{pkg}.{name[:-3]}"
                    if modname not in sys.modules:
                        importlib.import_module(modname)
                        loaded = True
        return loaded
    return False


def is_heartbeat(any_msg: Any) -> bool:
    """A `Resource` wrapper without a resource: a TTL heartbeat (Envoy skips it)."""
    if any_msg.type_url != _RESOURCE_WRAPPER:
        return False
    wrapper = discovery_pb2.Resource()
    wrapper.ParseFromString(any_msg.value)
    return not wrapper.HasField("resource")


def wrapper_info(any_msg: Any) -> tuple[str, float | None, bool] | None:
    """A `Resource` wrapper's (name, ttl in seconds or None, holds a resource); None when the
    Any is the resource itself (no wrapper: no TTL)."""
    if any_msg.type_url != _RESOURCE_WRAPPER:
        return None
    wrapper = discovery_pb2.Resource()
    wrapper.ParseFromString(any_msg.value)
    ttl = wrapper.ttl.ToTimedelta().total_seconds() if wrapper.HasField("ttl") else None
    return wrapper.name, ttl, wrapper.HasField("resource")


def resource_to_dict(any_msg: Any) -> dict[str, Any]:
    """One resource (an Any) as proto3 JSON data with `@type`; a `Resource` wrapper is opened."""
    for _ in range(32):   # each round may load one more package of Any types
        try:
            out = json_format.MessageToDict(any_msg, preserving_proto_field_name=True)
        except TypeError as e:
            missing = _missing_type(e)
            if missing is None or not _load_package_of(missing):
                raise ValueError(f"cannot decode {any_msg.type_url}: {e}") from None
            continue
        if out.get("@type") == _RESOURCE_WRAPPER:
            inner = out.get("resource")
            if not isinstance(inner, Mapping):
                raise ValueError("a Resource wrapper without a resource")
            out = inner
        return _plain(out)
    raise ValueError(f"cannot decode {any_msg.type_url}: too many nested unknown types")


def _plain(v: Any) -> Any:
    """json_format's OrderedDicts as plain dicts (YAML dumps and equality as a file's data)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _missing_type(e: TypeError) -> str | None:
    text = str(e)
    marker = "type_url:"
    if marker in text:
        return text.split(marker, 1)[1].strip().split()[0]
    return None


def node_message(node: Any, user_agent_name: str, version: tuple[int, int, int]) -> Any:
    """The bootstrap's node as `config.core.v3.Node`, with the user agent as Envoy fills it
    (`user_agent_name` and `user_agent_build_version.version`)."""
    n = base_pb2.Node()
    n.id = node.id
    n.cluster = node.cluster
    if node.zone:
        n.locality.zone = node.zone
    if getattr(node, "region", ""):
        n.locality.region = node.region
    if getattr(node, "sub_zone", ""):
        n.locality.sub_zone = node.sub_zone
    if node.metadata:
        json_format.ParseDict(dict(node.metadata), n.metadata)
    n.user_agent_name = user_agent_name
    bv = n.user_agent_build_version.version
    bv.major_number, bv.minor_number, bv.patch = version
    return n


def encode_request(type_url: str, version_info: str, nonce: str, resource_names: list[str],
                   node: Any | None, error: str | None) -> bytes:
    """A DiscoveryRequest's bytes; `error` makes it a NACK (error_detail INTERNAL, as Envoy)."""
    req = discovery_pb2.DiscoveryRequest()
    req.type_url = type_url
    req.version_info = version_info
    req.response_nonce = nonce
    req.resource_names.extend(resource_names)
    if node is not None:
        req.node.CopyFrom(node)
    if error is not None:
        req.error_detail.code = _INTERNAL
        req.error_detail.message = error
    return req.SerializeToString()


class DeltaProtoResponse:
    """A decoded DeltaDiscoveryResponse: [(name, version, Any or None)] and the removed names."""

    __slots__ = ("system_version_info", "type_url", "nonce", "resources", "removed", "ttls")

    def __init__(self, system_version_info: str, type_url: str, nonce: str, resources: list,
                 removed: list[str], ttls: dict[str, float] | None = None) -> None:
        self.system_version_info = system_version_info
        self.type_url = type_url
        self.nonce = nonce
        self.resources = resources
        self.removed = removed
        self.ttls = ttls or {}   # name -> Resource.ttl in seconds (only those that have one)


def decode_delta_response(data: bytes) -> DeltaProtoResponse:
    msg = discovery_pb2.DeltaDiscoveryResponse()
    msg.ParseFromString(data)
    resources = [(r.name, r.version, r.resource if r.HasField("resource") else None)
                 for r in msg.resources]
    ttls = {r.name: r.ttl.ToTimedelta().total_seconds() for r in msg.resources if r.HasField("ttl")}
    return DeltaProtoResponse(msg.system_version_info, msg.type_url, msg.nonce, resources,
                              list(msg.removed_resources), ttls)


def encode_delta_request(type_url: str, nonce: str, subscribe: list[str], unsubscribe: list[str],
                         initial_versions: dict[str, str], node: Any | None,
                         error: str | None) -> bytes:
    """A DeltaDiscoveryRequest's bytes (no version_info: delta ACKs carry only the nonce)."""
    req = discovery_pb2.DeltaDiscoveryRequest()
    req.type_url = type_url
    req.response_nonce = nonce
    req.resource_names_subscribe.extend(subscribe)
    req.resource_names_unsubscribe.extend(unsubscribe)
    for k, v in initial_versions.items():
        req.initial_resource_versions[k] = v
    if node is not None:
        req.node.CopyFrom(node)
    if error is not None:
        req.error_detail.code = _INTERNAL
        req.error_detail.message = error
    return req.SerializeToString()
