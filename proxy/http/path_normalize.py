"""Path and host normalisation of the HTTP connection manager, before routing.

Job: Envoy 1.40's ConnectionManagerUtility::maybeNormalizePath and ::maybeNormalizeHost, and
the x-forwarded-port its mutateRequestHeaders adds, as pure functions of bytes, so that routes,
RBAC, access logs and the upstream all see one canonical request:
- a fragment (`#`) in the path is refused on every request, whatever the options (Envoy's
  runtime default http_reject_path_with_fragment);
- `path_with_escaped_slashes_action`: %2F / %5C (either case) in the path, not the query, are
  kept, refused, or unescaped to `/` and `\\` and then forwarded or redirected to (307; a
  gRPC request, whose clients do not follow redirects, is refused instead);
- `normalize_path`: RFC 3986 normalisation as Chromium's URL library canonicalises a path
  (Envoy links that library): `.` and `..` segments resolved (also spelt %2E), `\\` as a
  separator, escapes of unreserved characters decoded, characters a URL may not carry
  escaped, and an escaped NUL refused; before it, a segment `..;x` or `.;x` loses its
  parameters (as Envoy 1.40 does: measured, see drop_dot_segment_parameters);
- `merge_slashes`: runs of `/` in the path merged, after the normalisation;
- `strip_trailing_host_dot`, then `strip_matching_host_port` (the listener's port) or
  `strip_any_host_port`: the authority as the routes match it;
- `append_x_forwarded_port`: the port the client connected to.
The query is never touched. `compile_normalization` turns one HCM's options into an immutable
`HeadNormalization` once (None when every option is at its default: such a request pays only
the fragment test).

Must not: do I/O, or answer requests (the connection manager sends the 400 or the 307 this
module decides). Thread affinity: none; a `HeadNormalization` is immutable and shared by every
worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CONTINUE", "REJECT", "REDIRECT", "HeadNormalization", "compile_normalization",
           "normalize_request_path", "canonical_path", "drop_dot_segment_parameters",
           "merge_slashes", "unescape_slashes",
           "strip_trailing_host_dot", "strip_host_port"]

# What a path normalisation decides (Envoy's NormalizePathAction).
CONTINUE = 0
REJECT = 1
REDIRECT = 2

# path_with_escaped_slashes_action, as compiled (IMPLEMENTATION_SPECIFIC_DEFAULT is Envoy 1.40's
# runtime default, KEEP_UNCHANGED).
_KEEP, _REJECT, _REDIRECT, _FORWARD = 0, 1, 2, 3
_ESCAPED_SLASHES = {"IMPLEMENTATION_SPECIFIC_DEFAULT": _KEEP, "KEEP_UNCHANGED": _KEEP,
                    "REJECT_REQUEST": _REJECT, "UNESCAPE_AND_REDIRECT": _REDIRECT,
                    "UNESCAPE_AND_FORWARD": _FORWARD}
# strip_*_host_port
_STRIP_NONE, _STRIP_MATCHING, _STRIP_ANY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class HeadNormalization:
    """One HCM's normalisation options, compiled once (main thread), shared by the workers."""
    escaped_slashes: int = _KEEP
    normalize_path: bool = False
    merge_slashes: bool = False
    strip_trailing_host_dot: bool = False
    strip_port: int = _STRIP_NONE
    append_x_forwarded_port: bool = False
    # use_remote_address with no trusted hop: the client's x-forwarded-port is replaced; else it
    # is kept (as Envoy trusts a trusted hop's x-forwarded-proto).
    overwrite_x_forwarded_port: bool = False
    changes_host: bool = False   # strip_trailing_host_dot or a strip_*_host_port

    def host(self, authority: bytes, local_port: int) -> bytes:
        """The authority as the routes see it (Envoy's maybeNormalizeHost); `local_port`: the
        port the connection came to (the listener's, or the one original_dst restored)."""
        if self.strip_trailing_host_dot:
            authority = strip_trailing_host_dot(authority)
        if self.strip_port == _STRIP_ANY:
            return strip_host_port(authority, None)
        if self.strip_port == _STRIP_MATCHING:
            return strip_host_port(authority, local_port)
        return authority


def compile_normalization(config) -> HeadNormalization | None:
    """`config`: an HcmConfig. None when no option asks for anything."""
    strip = (_STRIP_ANY if config.strip_any_host_port
             else _STRIP_MATCHING if config.strip_matching_host_port else _STRIP_NONE)
    overwrite = config.use_remote_address and not config.xff_num_trusted_hops
    norm = HeadNormalization(
        escaped_slashes=_ESCAPED_SLASHES[config.path_with_escaped_slashes_action],
        normalize_path=config.normalize_path,
        merge_slashes=config.merge_slashes,
        strip_trailing_host_dot=config.strip_trailing_host_dot,
        strip_port=strip,
        append_x_forwarded_port=config.append_x_forwarded_port,
        overwrite_x_forwarded_port=overwrite,
        changes_host=config.strip_trailing_host_dot or strip != _STRIP_NONE,
    )
    if norm == HeadNormalization(overwrite_x_forwarded_port=overwrite):
        return None
    return norm


def normalize_request_path(path: bytes, norm: HeadNormalization | None) -> tuple[int, bytes]:
    """(CONTINUE, REJECT or REDIRECT, the path as the request now carries it). As Envoy edits
    the header in place step by step, a refused request keeps what the steps before the
    refusal made of it (its access log shows that). `norm` None: only the fragment test."""
    if path.find(b"#") >= 0:   # (.find: `in` on bytes costs 10x on CPython 3.13)
        return REJECT, path
    if norm is None:
        return CONTINUE, path
    q = path.find(b"?")   # each step works on the path part: split once
    head, query = (path, b"") if q < 0 else (path[:q], path[q:])
    original = head
    action = CONTINUE
    if norm.escaped_slashes != _KEEP and head.find(b"%") >= 0:
        unescaped, found = _ESCAPED_SLASH.subn(_escaped_slash, head)
        if found:
            head = unescaped
            if norm.escaped_slashes == _REJECT:
                return REJECT, head + query
            if norm.escaped_slashes == _REDIRECT:
                action = REDIRECT
    if norm.normalize_path:
        if head.find(b";") >= 0:
            head = _DOT_PARAMETERS.sub(rb"\1", head)
        canonical = _canonical_head(head)
        if canonical is None:
            return REJECT, head + query
        head = canonical
    if norm.merge_slashes and head.find(b"//") >= 0:
        head = _merge_slashes(head)
    return action, (path if head is original else head + query)


# -- escaped slashes ------------------------------------------------------------------------

_ESCAPED_SLASH = re.compile(rb"%2[fF]|%5[cC]")


def _escaped_slash(m: re.Match) -> bytes:
    return b"/" if m.group()[1] == 0x32 else b"\\"


def unescape_slashes(path: bytes) -> bytes | None:
    """%2F and %5C (either case) in the path part decoded to `/` and `\\` (Envoy's
    PathUtil::unescapeSlashes); None when there is none."""
    q = path.find(b"?")
    head, query = (path, b"") if q < 0 else (path[:q], path[q:])
    if b"%" not in head:
        return None
    decoded, n = _ESCAPED_SLASH.subn(_escaped_slash, head)
    return decoded + query if n else None


# -- normalize_path: parameters of dot segments -------------------------------------------

# A segment `.;<params>` or `..;<params>` (after a literal `/`, with literal dots).
_DOT_PARAMETERS = re.compile(rb"(?<=/)(\.\.?);[^/]*")


def drop_dot_segment_parameters(path: bytes) -> bytes:
    """A segment `.;x` or `..;x` of the path part made `.` or `..`, its parameters dropped up
    to the next `/` (as a servlet container reads "/..;/"): what Envoy 1.40's normalize_path
    does before canonicalising (measured: only literal dots after a literal `/`, not %2E, not
    after `\\`; a path that then fails the canonicalisation is logged with them dropped)."""
    q = path.find(b"?")
    if q < 0:
        return _DOT_PARAMETERS.sub(rb"\1", path)
    return _DOT_PARAMETERS.sub(rb"\1", path[:q]) + path[q:]


# -- merge_slashes --------------------------------------------------------------------------

def merge_slashes(path: bytes) -> bytes:
    """Runs of `/` in the path part made one (Envoy's PathUtil::mergeSlashes, whose result for
    a path of only slashes, `//`, stays `//`)."""
    q = path.find(b"?")
    head, query = (path, b"") if q < 0 else (path[:q], path[q:])
    if b"//" not in head:
        return path
    return _merge_slashes(head) + query


def _merge_slashes(head: bytes) -> bytes:
    prefix = b"/" if head.startswith(b"/") else b""
    suffix = b"/" if head.endswith(b"/") else b""
    return prefix + b"/".join(s for s in head.split(b"/") if s) + suffix


# -- normalize_path: Chromium's path canonicalisation ---------------------------------------
#
# url_canon_path.cc (the version Envoy 1.40 links: escapes of unreserved characters are
# decoded, an escaped NUL fails): each byte is passed, escaped, or special.
_PASS, _SPECIAL, _ESCAPE, _UNESCAPE, _INVALID = 0, 1, 3, 4, 9   # bit 1: escape, bit 3: invalid


def _char_table() -> bytes:
    t = bytearray([_ESCAPE]) * 256          # controls, DEL and every byte >= 0x80
    t[0] = _INVALID
    for c in b"!$&'()*+,/:;=@[]":
        t[c] = _PASS
    for c in b" \"#%<>?\\^`{|}":
        t[c] = _ESCAPE
    for c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_~":
        t[c] = _UNESCAPE
    t[ord(".")] = _SPECIAL
    return bytes(t)


_CHARS = _char_table()
# Bytes that a path made only of them (and no "/.") leaves unchanged: the fast path.
_PLAIN = bytes(c for c in range(256) if _CHARS[c] in (_PASS, _UNESCAPE) or c == ord("."))
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = (0x2F, 0x5C)   # "/" and "\\"
_DOT, _PERCENT = 0x2E, 0x25


def canonical_path(path: bytes) -> bytes | None:
    """The path part canonicalised, the query kept as it is (Envoy's PathUtil::canonicalPath);
    None when Chromium's canonicaliser fails (an escaped or raw NUL)."""
    q = path.find(b"?")
    head, query = (path, b"") if q < 0 else (path[:q], path[q:])
    out = _canonical_head(head)
    return None if out is None else (path if out is head else out + query)


def _canonical_head(head: bytes) -> bytes | None:
    """The path part canonicalised (itself when nothing changes), or None."""
    if head[:1] == b"/" and not head.translate(None, _PLAIN) and b"/." not in head:
        return head
    return _canonicalize(head)


def _is_dot(s: bytes, i: int, end: int) -> int:
    """The length of a dot at `i`: 1 for `.`, 3 for %2E / %2e, else 0."""
    c = s[i]
    if c == _DOT:
        return 1
    if c == _PERCENT and i + 2 < end and s[i + 1] == 0x32 and s[i + 2] in (0x45, 0x65):
        return 3
    return 0


def _canonicalize(s: bytes) -> bytes | None:
    out = bytearray()
    end = len(s)
    if not end or s[0] not in _SLASHES:
        out.append(0x2F)
    ok = True
    last_invalid = -4   # where the output's last `%` of no valid escape is (Chromium's)
    i = 0
    while i < end:
        c = s[i]
        flags = _CHARS[c]
        if not flags & _SPECIAL:
            out.append(c)
        elif (dot := _is_dot(s, i, end)):
            i = _dot(s, i, dot, end, out)
        elif c == 0x5C:
            out.append(0x2F)                 # a backslash is a separator
        elif c == _PERCENT:
            if i + 2 < end and s[i + 1] in _HEX and s[i + 2] in _HEX:
                value = int(s[i + 1:i + 3], 16)
                vflags = _CHARS[value]
                if vflags & _UNESCAPE:
                    out.append(value)
                    if last_invalid >= len(out) - 3:
                        _nested_escape(s, i + 3, end, last_invalid, out)
                else:                        # kept as written (the case of its hex too)
                    out += s[i:i + 3]
                    if vflags & 8:
                        ok = False           # an escaped NUL
                i += 2
            else:
                last_invalid = len(out)
                out.append(_PERCENT)         # not an escape: passed on
        elif flags & 8:
            out += b"%%%02X" % c             # a raw NUL (codecs refuse it before this)
            ok = False
        else:
            out += b"%%%02X" % c
        i += 1
    return bytes(out) if ok else None


def _nested_escape(s: bytes, nxt: int, end: int, percent: int, out: bytearray) -> None:
    """Chromium's CheckForNestedEscapes: a byte just decoded has made, with an earlier `%` of
    no valid escape (at `percent`), a new escape ("%2%41" -> "%2A"): that `%` becomes "%25"
    ("%252A"), so a second decoding cannot read what the first did not."""
    length = len(out)
    last = out[-1]
    append_next = percent == length - 2       # "%c": try with the next input byte
    if append_next:
        if nxt == end or s[nxt] >= 0x80:
            return
        out.append(s[nxt])
    if percent + 3 <= len(out) and out[percent + 1] in _HEX and out[percent + 2] in _HEX:
        if not append_next:
            out.append(out[percent + 1])
        out[percent + 1] = 0x32                # "2"
        out[percent + 2] = 0x35                # "5"
        out.append(last)
    elif append_next:
        del out[length:]


def _dot(s: bytes, i: int, dot: int, end: int, out: bytearray) -> int:
    """A dot (of `dot` bytes) at `i`: a `.` or `..` segment when a slash precedes it in the
    output and a slash or the end follows. Returns the index of its last byte consumed."""
    if not out or out[-1] != 0x2F:
        out.append(_DOT)                     # part of a name
        return i + dot - 1
    after = i + dot
    if after == end:
        return after - 1                     # "." at the end
    if s[after] in _SLASHES:
        return after                         # "./": skipped, slash and all
    second = _is_dot(s, after, end)
    if second:
        after2 = after + second
        if after2 == end or s[after2] in _SLASHES:
            _back_up(out)                    # "..": up one segment, never above the root
            return after2 if after2 < end else end - 1
    out.append(_DOT)
    return i + dot - 1


def _back_up(out: bytearray) -> None:
    """The output ends with a slash: drop the segment before it (not the first slash)."""
    i = len(out) - 1
    if i == 0:
        return
    i -= 1
    while out[i] != 0x2F and i > 0:
        i -= 1
    del out[i + 1:]


# -- host -----------------------------------------------------------------------------------

def strip_trailing_host_dot(host: bytes) -> bytes:
    """A dot ending the host name removed, before a port too (Envoy's
    HeaderUtility::stripTrailingHostDot: one dot only)."""
    dot = host.rfind(b".")
    if dot < 0:
        return host
    if dot == len(host) - 1:
        return host[:-1]
    if host[dot + 1:dot + 2] == b":":
        return host[:dot] + host[dot + 1:]
    return host


def strip_host_port(host: bytes, port: int | None) -> bytes:
    """The host without its `:port` (Envoy's HeaderUtility::stripPortFromHost): any port when
    `port` is None, else only that one. An IPv6 literal's colons are not a port; a port that
    is no number (or none) stays."""
    colon = host.rfind(b":")
    if colon < 0 or host.rfind(b"]") > colon:
        return host
    value = _port_number(host[colon + 1:])
    if value is None or (port is not None and value != port):
        return host
    return host[:colon]


def _port_number(text: bytes) -> int | None:
    """absl::SimpleAtoi into a uint32: optional whitespace around, an optional `+`."""
    if text.isdigit() and len(text) < 10:
        return int(text)
    text = text.strip()
    if text[:1] == b"+":
        text = text[1:]
    if not text or not text.isdigit():
        return None
    value = int(text)
    return value if value <= 0xFFFFFFFF else None
