"""An API-key check, as an ftproxy HTTP filter written in Python (what an Envoy user would
write in Lua or Wasm).

A request must carry its key in a header (`x-api-key` unless `header` says otherwise): a key
in `keys` passes at once; with `verify_cluster`, a key not in `keys` is asked about, without
blocking the worker, with `GET /keys/<key>` to that cluster (200: valid); anything else is
answered 401 (no key) or 403 (a key nobody knows), and the key itself is never forwarded.

    http_filters:
    - name: ftproxy.filters.http.python
      typed_config:
        "@type": type.googleapis.com/ftproxy.extensions.filters.http.python.v1.PythonFilter
        path: examples/python_filters
        module: api_key_check
        class: ApiKeyCheck
        config: {keys: [demo-key], verify_cluster: keys, timeout: 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from proxy.http.filter import FilterHeadersStatus, PassThroughFilter


@dataclass(frozen=True)
class Config:
    header: bytes
    keys: frozenset[bytes]
    verify_cluster: str | None
    timeout: float


class ApiKeyCheck(PassThroughFilter):
    @staticmethod
    def parse_config(config: dict) -> Config:
        """Once, at load: a mistake here is a config error naming this filter's `config`."""
        keys = config.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("keys must be a list of non-empty strings")
        cluster = config.get("verify_cluster")
        if not keys and not cluster:
            raise ValueError("set keys, verify_cluster, or both")
        return Config(str(config.get("header", "x-api-key")).lower().encode(),
                      frozenset(k.encode() for k in keys), cluster, float(config.get("timeout", 0.5)))

    def __init__(self, callbacks, config: Config) -> None:
        self.cb = callbacks
        self.config = config
        self.head = None
        self.pending = None   # the key service's request while we wait for it

    def decode_headers(self, head, end_stream: bool) -> int:
        cfg = self.config
        key = head.headers.get(cfg.header)
        if not key:
            self.cb.send_local_reply(401, b"missing API key\n", None, "api_key_missing",
                                     [(b"www-authenticate", b"ApiKey header=" + cfg.header)])
            return FilterHeadersStatus.STOP_ITERATION
        head.headers.remove(cfg.header)  # the key is ours: the upstream never sees it
        if key in cfg.keys:
            return FilterHeadersStatus.CONTINUE
        if cfg.verify_cluster is None:
            return self._refuse()
        self.head = head
        self.pending = self.cb.http_call(cfg.verify_cluster, b"GET", b"/keys/" + quote(key, safe="").encode(),
                                         [], b"", cfg.timeout, self._on_verdict)
        return FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK  # hold the request meanwhile

    def _on_verdict(self, answer) -> None:
        self.pending = None
        if answer.status == 200:
            self.cb.continue_decoding()
        elif answer.local or answer.status >= 500:
            self.cb.send_local_reply(503, b"key service unavailable\n", None, "api_key_service_unavailable")
        else:
            self._refuse()

    def _refuse(self) -> int:
        self.cb.send_local_reply(403, b"invalid API key\n", None, "api_key_invalid")
        return FilterHeadersStatus.STOP_ITERATION

    def on_destroy(self) -> None:
        if self.pending is not None:  # the client left while we asked: stop asking
            self.pending.cancel()
            self.pending = None
