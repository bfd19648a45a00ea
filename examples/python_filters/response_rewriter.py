"""A response rewriter, as an ftproxy HTTP filter written in Python: in responses whose
content-type starts with one of `content_types`, every `replace` key becomes its value; the
response's content-length is set to the new length, and `x-rewritten-by: ftproxy-python` says
it happened. The body is held until its end (up to the listener's buffer limit: past it the
response is a 500, as for any filter that buffers).

    - name: ftproxy.filters.http.python
      typed_config:
        "@type": type.googleapis.com/ftproxy.extensions.filters.http.python.v1.PythonFilter
        path: examples/python_filters
        module: response_rewriter
        class: ResponseRewriter
        config: {replace: {"service1": "the first service"}, content_types: [application/json, text/]}
"""

from __future__ import annotations

from proxy.http.filter import FilterDataStatus, FilterHeadersStatus, PassThroughFilter


class ResponseRewriter(PassThroughFilter):
    @staticmethod
    def parse_config(config: dict) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]:
        replace = config.get("replace")
        if not isinstance(replace, dict) or not replace:
            raise ValueError("replace must be a non-empty mapping of text to text")
        types = config.get("content_types", ["text/"])
        return (tuple((str(k).encode(), str(v).encode()) for k, v in replace.items()),
                tuple(str(t).lower().encode() for t in types))

    def __init__(self, callbacks, config) -> None:
        self.cb = callbacks
        self.replace, self.types = config
        self.head = None

    def encode_headers(self, head, end_stream: bool) -> int:
        ctype = (head.headers.get(b"content-type") or b"").lower()
        if end_stream or not ctype.startswith(self.types):
            return FilterHeadersStatus.CONTINUE
        self.head = head  # held until the body is rewritten (its length changes)
        head.headers.set(b"x-rewritten-by", b"ftproxy-python")
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool):
        if self.head is None:
            return FilterDataStatus.CONTINUE
        if not end_stream:
            return FilterDataStatus.STOP_ITERATION_AND_BUFFER
        held = self.cb.encoding_buffer()
        body = (bytes(held) if held else b"") + data
        if held:
            held.clear()
        body = self._rewrite(body)
        self.head.headers.set(b"content-length", b"%d" % len(body))
        return body  # CONTINUE, with these bytes in place of the body

    def encode_trailers(self, trailers) -> int:
        held = self.cb.encoding_buffer()
        if self.head is not None and held:
            held[:] = self._rewrite(bytes(held))
            self.head.headers.remove(b"content-length")  # framed by the codec, trailers last
        return FilterHeadersStatus.CONTINUE

    def _rewrite(self, body: bytes) -> bytes:
        for old, new in self.replace:
            body = body.replace(old, new)
        return body
