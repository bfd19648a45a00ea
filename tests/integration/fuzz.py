"""Shared pieces of the request and response fuzz campaigns (test_fuzz_robustness.py,
test_fuzz_responses.py): seeded byte-level mutators of HTTP/1.1 messages, and the parser that
splits what a client received into responses.

Every mutator is `m(rng, data) -> data`: pure given its `random.Random`, so a seed rebuilds the
same input. Positions favour the head (three times in four), where framing lives. The
line-inserting mutators are built from a table (`insert_line(lines)`), so each campaign brings
its own framing lines and injections.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Mutator = Callable[[random.Random, bytes], bytes]

SPECIAL_BYTES = b"\r\n\x00 :\t\x7f\xff;,"


def head_end(data: bytes) -> int:
    i = data.find(b"\r\n\r\n")
    return len(data) if i < 0 else i


def pos(rng: random.Random, data: bytes, head_bias: float = 0.75) -> int:
    end = head_end(data)
    if end and rng.random() < head_bias:
        return rng.randrange(end + 1)
    return rng.randrange(len(data) + 1)


def line_start(rng: random.Random, data: bytes) -> int:
    """Just after a random CRLF inside the head (a header line boundary)."""
    end = head_end(data)
    starts = [m.end() for m in re.finditer(rb"\r\n", data[:end])]
    return rng.choice(starts) if starts else len(data)


def m_flip(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d)) if rng.random() < 0.3 else min(pos(rng, d), len(d) - 1)
    b = d[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(256)
    return d[:i] + bytes([b]) + d[i + 1:]


def m_insert(rng: random.Random, d: bytes) -> bytes:
    i = pos(rng, d)
    ins = bytes([rng.choice(SPECIAL_BYTES) if rng.random() < 0.8 else rng.randrange(256)
                 for _ in range(rng.choice((1, 1, 2, 3)))])
    return d[:i] + ins + d[i:]


def m_delete(rng: random.Random, d: bytes) -> bytes:
    i = pos(rng, d)
    return d[:i] + d[i + rng.randint(1, 4):]


def m_truncate(rng: random.Random, d: bytes) -> bytes:
    return d[:rng.randrange(1, len(d))] if len(d) > 1 else d


def m_obs_fold(rng: random.Random, d: bytes) -> bytes:
    i = line_start(rng, d)
    return d[:i] + rng.choice((b" ", b"\t", b"  ")) + b"folded-" + bytes([rng.choice(b"abc:")]) + b"\r\n" + d[i:]


def m_line_endings(rng: random.Random, d: bytes) -> bytes:
    crlfs = [m.start() for m in re.finditer(rb"\r\n", d[:head_end(d) + 4])]
    if not crlfs:
        return d
    i = rng.choice(crlfs)
    return d[:i] + rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r\n")) + d[i + 2:]


def insert_line(lines: Sequence[bytes]) -> Mutator:
    """A mutator that inserts one of `lines` as a header line."""
    def m(rng: random.Random, d: bytes) -> bytes:
        i = line_start(rng, d)
        return d[:i] + rng.choice(lines) + b"\r\n" + d[i:]
    return m


def oversize(big_values: Sequence[int], long_names: Sequence[int]) -> Mutator:
    """A mutator that inserts an oversized value, many fields, or a long name."""
    def m(rng: random.Random, d: bytes) -> bytes:
        i = line_start(rng, d)
        kind = rng.randrange(3)
        if kind == 0:
            line = b"X-Big: " + b"b" * rng.choice(big_values)
        elif kind == 1:
            line = b"\r\n".join(b"X-Many-%d: v" % k for k in range(rng.choice((90, 120))))
        else:
            line = b"X-" + b"n" * rng.choice(long_names) + b": v"
        return d[:i] + line + b"\r\n" + d[i:]
    return m


# -- replies -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    complete: bool | None

    def get(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3})(?: [^\r\n]*)?\r\n")


def parse_responses(reply: bytes, methods: tuple[bytes, ...]) -> tuple[list[Resp], str | None]:
    """Split what the client got into responses (1xx included); a body cut short at the end
    gives a last response with complete=False. The second item names a framing fault."""
    out: list[Resp] = []
    pos = 0
    while pos < len(reply):
        m = _STATUS.match(reply, pos)
        end = reply.find(b"\r\n\r\n", m.end() - 2) if m else -1
        if m is None or end < 0:
            return out, f"malformed or truncated response head at byte {pos}: {reply[pos:pos + 80]!r}"
        status = int(m.group(1))
        headers = []
        for line in reply[m.end():end].split(b"\r\n") if end >= m.end() else ():
            k, sep, v = line.partition(b":")
            if not sep or k != k.strip() or not k:
                return out, f"bad response header line {line!r}"
            headers.append((k.lower(), v.strip()))
        r = Resp(status, headers, True)
        out.append(r)
        pos = end + 4
        finals = sum(1 for x in out if x.status >= 200)
        method = methods[finals - 1] if 0 < finals <= len(methods) else b"GET"
        if status < 200 or status in (204, 304) or method == b"HEAD":
            continue
        te = r.get(b"transfer-encoding")
        cl = r.get(b"content-length")
        if te is not None:
            if te.lower() != b"chunked" or cl is not None:
                return out, f"bad framing headers te={te!r} cl={cl!r}"
            while True:
                le = reply.find(b"\r\n", pos)
                if le < 0:
                    r.complete = False
                    return out, None
                try:
                    size = int(reply[pos:le].split(b";")[0], 16)
                except ValueError:
                    return out, f"bad chunk size line {reply[pos:le][:40]!r}"
                if size == 0:
                    tend = reply.find(b"\r\n\r\n", le)
                    if tend < 0 and reply[le:le + 4] != b"\r\n\r\n":
                        r.complete = False
                        return out, None
                    pos = (tend + 4) if tend >= 0 else le + 4
                    break
                pos = le + 2 + size + 2
                if pos > len(reply):
                    r.complete = False
                    return out, None
                if reply[pos - 2:pos] != b"\r\n":
                    return out, "chunk data not followed by CRLF"
        elif cl is not None:
            if not cl.isdigit() or len([1 for k, _ in headers if k == b"content-length"]) > 1:
                return out, f"bad content-length {cl!r}"
            pos += int(cl)
            if pos > len(reply):
                r.complete = False
                return out, None
        else:
            r.complete = None  # close-delimited: complete only if the proxy closed (checked later)
            pos = len(reply)
    return out, None


def recv_some(s: socket.socket, until: float) -> tuple[bytes | None, bool]:
    """One read that ends by the monotonic time `until`: (bytes, False); (None, True) once the
    peer closed (or reset) the connection; (None, False) at the deadline."""
    left = until - time.monotonic()
    if left <= 0:
        return None, False
    s.settimeout(left)
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        return None, False
    except ConnectionResetError:  # closed with bytes of ours unread: a close too
        return None, True
    return (chunk, False) if chunk else (None, True)
