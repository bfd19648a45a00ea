"""The RESP codec (proxy/network/redis/resp.py) and the key hashing (commands.py), bytes in /
values out: values split over any reads, inline commands as redis-server splits them, the
limits Envoy 1.40 applies, and re-encoding as Envoy does (a null array becomes `$-1`)."""

from __future__ import annotations

import pytest

from proxy.network.redis.commands import hash_tag, murmur_hash2
from proxy.network.redis.resp import (MAX_ARRAY, MAX_BULK, Decoder, Error, ProtocolError, SimpleString,
                                      encode, encode_request, split_inline)

RESPONSES = (b"+OK\r\n-ERR no\r\n:-42\r\n$3\r\nabc\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
             b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n")
VALUES = [SimpleString(b"OK"), Error(b"ERR no"), -42, b"abc", b"", None, None, [], [1, [b"a", None], SimpleString(b"x")]]


def _decode(chunks, inline=False):
    out = []
    d = Decoder(out.append, inline=inline)
    for c in chunks:
        d.feed(c)
    return out, d


def test_values_decode_the_same_whatever_the_reads():
    whole, d = _decode([RESPONSES])
    assert whole == VALUES and d.idle
    for size in (1, 2, 3, 7):
        pieces = [RESPONSES[i:i + size] for i in range(0, len(RESPONSES), size)]
        assert _decode(pieces)[0] == VALUES
    assert [type(v) for v in whole[:2]] == [SimpleString, Error]


def test_encode_gives_back_the_bytes_but_a_null_array_as_envoy_does():
    out = []
    for v in VALUES:
        encode(v, out)
    assert b"".join(out) == RESPONSES.replace(b"*-1\r\n", b"$-1\r\n")
    assert encode_request([b"GET", b"k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def test_inline_commands_on_the_request_side_only():
    values, _ = _decode([b"SET  k \"a b\\x41\\n\" 'it\\'s'\r\n\r\nGET\tk\r\nPING\n"], inline=True)
    assert values == [[b"SET", b"k", b"a bA\n", b"it's"], [], [b"GET", b"k"]]   # "PING\n" waits for CRLF
    with pytest.raises(ProtocolError):
        _decode([b"GET k\r\n"])
    for bad in (b'GET "k\r\n', b'GET "k"x\r\n', b"GET 'k\r\n"):
        with pytest.raises(ProtocolError):
            _decode([bad], inline=True)
    assert split_inline(b"  ") == []


@pytest.mark.parametrize("bad", [b":\r\n", b":-\r\n", b"*1 \r\n", b"*-2\r\n", b"$-3\r\n", b"$1\r\nab\r\n",
                                 b"+a\rb\r\n", b"$%d\r\n" % (MAX_BULK + 1), b"*%d\r\n" % (MAX_ARRAY + 1),
                                 b"*1\r\nGET\r\n"])
def test_malformed_or_oversized_is_a_protocol_error(bad):
    with pytest.raises(ProtocolError):
        _decode([bad], inline=True)


def test_values_before_an_error_in_the_same_read_are_delivered():
    out = []
    d = Decoder(out.append, inline=True)
    with pytest.raises(ProtocolError):
        d.feed(b"*1\r\n$4\r\nPING\r\n$x\r\n")
    assert out == [[b"PING"]]


def test_limits_themselves_are_accepted():
    for announced in (b"$%d\r\n" % MAX_BULK, b"*%d\r\n" % MAX_ARRAY):
        values, d = _decode([announced])   # waiting for the rest, no error
        assert values == [] and not d.idle


def test_murmur_hash2_is_envoys_and_hash_tags_follow_redis_cluster():
    assert murmur_hash2(b"foo") == 9631199822919835226   # Envoy's hash_test.cc value
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"{}x") == b"{}x" and hash_tag(b"a{b") == b"a{b" and hash_tag(b"plain") == b"plain"


def test_pipelined_commands_decode_the_same_whatever_the_reads():
    """Whole commands take the one-pass path, split ones the incremental one: same values."""
    cmds = [[b"SET", b"k", b"v" * 300], [b"GET", b"k"], [b"MGET", b"a", b"", b"c\r\nd"]]
    data = b"".join(encode_request(c) for c in cmds) + b"*2\r\n$3\r\nGET\r\n:1\r\n"
    expected = [*cmds, [b"GET", 1]]
    assert _decode([data], inline=True)[0] == expected
    for size in (1, 5, 64):
        pieces = [data[i:i + size] for i in range(0, len(data), size)]
        assert _decode(pieces, inline=True)[0] == expected
