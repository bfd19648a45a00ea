"""What the listener found out about one accepted connection: `DownstreamInfo`.

Made once per connection by the listener (proxy/network/active_socket.py) when its listener
filters are done and its filter chain is chosen, and handed to the chain's terminal
(`new_connection(..., info=)`: the HCM's ConnectionManager, tcp_proxy's session) and the
network filters before it (`PendingConnection.info`). Immutable, owned by the worker that
accepted the connection; anything later in the connection's life (an access log's
`%REQUESTED_SERVER_NAME%`, `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`, a filter wanting the PROXY
protocol's addresses) reads it here.

Envoy keeps the same facts on its ConnectionSocket / ConnectionInfoProvider:
- `remote` / `local`: the downstream addresses — the socket's, unless a listener filter
  restored others (proxy_protocol: the addresses its header carries; original_dst: the
  pre-NAT destination). x-forwarded-for and `%DOWNSTREAM_REMOTE_ADDRESS%` use these.
- `direct_remote` / `direct_local`: always the socket's own peer and local address
  (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`, filter chain `direct_source_prefix_ranges`).
- `requested_server_name`: the SNI a tls_inspector read (lower-cased), "" without one.
- `application_protocols`: ALPN offered in the ClientHello, or what http_inspector saw
  ("http/1.0", "http/1.1", "h2c").
- `transport_protocol`: "tls" when tls_inspector found a ClientHello, else "raw_buffer".
- `filter_chain_name`: the `name` of the filter chain that took the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DownstreamInfo"]


@dataclass(frozen=True, slots=True)
class DownstreamInfo:
    remote: tuple[str, int]
    local: tuple[str, int]
    direct_remote: tuple[str, int]
    direct_local: tuple[str, int]
    requested_server_name: str = ""
    application_protocols: tuple[str, ...] = ()
    transport_protocol: str = "raw_buffer"
    filter_chain_name: str = ""
