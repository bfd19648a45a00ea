"""REST-JSON xDS (`api_config_source` with `api_type: REST`): Envoy's HttpSubscriptionImpl.

Every `refresh_delay` the main thread POSTs a JSON DiscoveryRequest (`version_info` of the last
accepted update, `resource_names`, `node`, `type_url`, and after a refused update its
`error_detail`) to `/v3/discovery:<listeners|clusters|routes|endpoints>` on a host of the
static cluster, over HTTP/1.1 (one connection per poll, on the main Dispatcher, as the active
health checks' sockets; the answer parsed with httptools). A 200 answer is a JSON
DiscoveryResponse, decoded exactly as a file's (subscription.decode_response) and applied
through the same callbacks; 304 means nothing changed; anything else, a connection failure or
no answer within `request_timeout` counts `update_failure` and keeps the config in force.
No protobuf is involved.

Stats: the subscription's (update_attempt per poll, update_success, update_rejected,
update_failure, version, update_time).
Thread affinity: main thread only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httptools

from proxy.config.config_source import ConfigSourceConfig
from proxy.config.reader import ConfigError, all_errors
from proxy.threads.client_socket import ClientSocket

from .subscription import (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
                           SubscriptionCallbacks, SubscriptionStats, decode_response)

__all__ = ["RestSubscription", "REST_PATHS", "node_json"]

log = logging.getLogger("ftproxy.xds")

REST_PATHS = {LISTENER_TYPE: "/v3/discovery:listeners", CLUSTER_TYPE: "/v3/discovery:clusters",
              ROUTE_TYPE: "/v3/discovery:routes", ENDPOINT_TYPE: "/v3/discovery:endpoints"}


def node_json(node: Any, user_agent: str, version: tuple[int, int, int]) -> dict:
    """The bootstrap's node as proto3 JSON, with the user agent as Envoy fills it."""
    out: dict[str, Any] = {"id": node.id, "cluster": node.cluster, "user_agent_name": user_agent,
                           "user_agent_build_version": {"version": {
                               "major_number": version[0], "minor_number": version[1],
                               "patch": version[2]}}}
    loc = {k: v for k, v in (("region", getattr(node, "region", "")), ("zone", node.zone),
                             ("sub_zone", getattr(node, "sub_zone", ""))) if v}
    if loc:
        out["locality"] = loc
    if node.metadata:
        out["metadata"] = dict(node.metadata)
    return out


class _Poll:
    """One POST and its answer (httptools callbacks)."""

    def __init__(self, owner: RestSubscription, address: tuple[str, int], request: bytes) -> None:
        self.owner = owner
        self.status = 0
        self.body = bytearray()
        self.done = False
        self.parser = httptools.HttpResponseParser(self)
        self.sock = ClientSocket(owner.dispatcher, address, lambda: None, self._on_data, self._on_closed)
        self.sock.write(request)
        self.timer = owner.dispatcher.call_later(owner.api.request_timeout, self._timeout)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self._end(self.status, bytes(self.body), "")

    def _on_data(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._end(0, b"", f"malformed HTTP answer: {e}")

    def _on_closed(self) -> None:
        self._end(0, b"", "connection closed before an answer" if self.sock.connected
                  else "connection failed")

    def _timeout(self) -> None:
        self._end(0, b"", "no answer within request_timeout")

    def _end(self, status: int, body: bytes, why: str) -> None:
        if self.done:
            return
        self.done = True
        self.timer.disable()
        self.sock.close()
        self.owner._answered(status, body, why)

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.timer.disable()
            self.sock.close()


class RestSubscription:
    """Implements `Subscription` for a REST api_config_source."""

    def __init__(self, source: ConfigSourceConfig, type_url: str, callbacks: SubscriptionCallbacks,
                 stats: SubscriptionStats, what: str, dispatcher, hosts: Callable[[], list],
                 node: dict, names: tuple[str, ...],
                 on_first_failed: Callable[[], None] | None = None) -> None:
        self.source = source
        self.api = source.api
        self.type_url = type_url
        self.callbacks = callbacks
        self.stats = stats
        self.what = what
        self.dispatcher = dispatcher
        self._hosts = hosts
        self.node = node
        self.names = names
        self.on_first_failed = on_first_failed
        self.first_done = False
        self.version_info = ""
        self.error: str | None = None      # the last refusal, sent with the next request
        self.poll_in_flight: _Poll | None = None
        self.host_index = 0
        self.stopped = False
        self._timer = dispatcher.create_timer(self._poll)

    # `Subscription`
    def start(self) -> None:
        self._poll()

    def poll(self) -> None:
        pass   # polled on its own timer (refresh_delay)

    def stop(self) -> None:
        self.stopped = True
        self._timer.disable()
        if self.poll_in_flight is not None:
            self.poll_in_flight.cancel()
            self.poll_in_flight = None

    # -- polling ---------------------------------------------------------------------------
    def _poll(self) -> None:
        if self.stopped or self.poll_in_flight is not None:
            return
        self.stats.update_attempt.inc()
        hosts = self._hosts()
        if not hosts:
            self._failed(f"cluster {self.api.cluster_name} has no host")
            return
        address = hosts[self.host_index % len(hosts)]
        self.host_index += 1
        req: dict[str, Any] = {"version_info": self.version_info, "node": self.node,
                               "resource_names": list(self.names), "type_url": self.type_url}
        if self.error is not None:
            req["error_detail"] = {"code": 13, "message": self.error}
        body = json.dumps(req).encode()
        head = (f"POST {REST_PATHS[self.type_url]} HTTP/1.1\r\nhost: {self.api.cluster_name}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n").encode()
        self.poll_in_flight = _Poll(self, address, head + body)

    def _answered(self, status: int, body: bytes, why: str) -> None:
        self.poll_in_flight = None
        if not self.stopped:
            self._timer.enable(self.api.refresh_delay)
        if status == 304:
            return   # nothing changed
        if status != 200:
            self._failed(why or f"HTTP status {status}")
            return
        try:
            doc = json.loads(body)
            resources, version = decode_response(doc, self.type_url, "")
            self.callbacks.on_update(resources, version)
        except (ValueError, ConfigError) as e:
            errs = all_errors(e) if isinstance(e, ConfigError) else [e]
            for err in errs:
                log.error("%s: update rejected, the previous config stays: %s", self.what, err)
            self.error = "\n".join(str(x) for x in errs)
            self.stats.update_rejected.inc()
            self._first(False)
            return
        self.error = None
        self.version_info = version
        self.stats.accepted(version)
        log.info("%s: version %r applied (%d resource(s))", self.what, version, len(resources))
        self._first(True)

    def _failed(self, why: str) -> None:
        if not self.stopped and not self._timer.enabled:
            self._timer.enable(self.api.refresh_delay)
        self.stats.update_failure.inc()
        log.warning("%s: REST poll of %s failed (%s); the config in force stays", self.what,
                    self.api.cluster_name, why)
        self._first(False)

    def _first(self, ok: bool) -> None:
        if self.first_done:
            return
        self.first_done = True
        if not ok and self.on_first_failed is not None:
            self.on_first_failed()
