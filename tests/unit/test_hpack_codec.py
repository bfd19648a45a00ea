"""proxy/http/codec/hpack_codec.py against the `hpack` library, the reference codec.

Decoder: header blocks hpack's own encoder made (Huffman and not, dynamic table indexing and
eviction, size updates, never-indexed fields) decode to what hpack's decoder gives, block after
block on one connection; mutated blocks either fail in both (an hpack exception, as h2 expects)
or decode to the same fields and leave the same table. Encoder: hpack's decoder reads back
exactly the fields given, over many blocks, with the peer's table size changing between them."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError

from proxy.http.codec.hpack_codec import Decoder, Encoder

NAMES = [b":method", b":path", b":authority", b":scheme", b":status", b"content-type",
         b"user-agent", b"accept", b"cookie", b"x-request-id", b"x-custom", b"date",
         b"content-length", b"authorization", b"te", b"grpc-status", b"x-" + b"y" * 140]
VALUES = [b"GET", b"POST", b"/", b"/index.html", b"/a/b?c=d", b"example.com", b"http", b"https",
          b"200", b"404", b"application/grpc", b"text/html", b"curl/8.5", b"*/*", b"0",
          b"trailers", b"", b"v" * 200, "caf\u00e9".encode(), bytes(range(32, 127))]


def _fields(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        name = rng.choice(NAMES)
        value = rng.choice(VALUES) if rng.random() < 0.8 else b"%d" % rng.randrange(10 ** 9)
        out.append(NeverIndexedHeaderTuple(name, value) if rng.random() < 0.05 else (name, value))
    return out


def _same(ours, theirs) -> None:
    assert [tuple(h) for h in ours] == [tuple(h) for h in theirs]
    assert [isinstance(h, NeverIndexedHeaderTuple) for h in ours] == \
        [isinstance(h, NeverIndexedHeaderTuple) for h in theirs]


@pytest.mark.parametrize("seed", range(6))
def test_decoder_reads_hpack_encoded_blocks_as_hpack_does(seed):
    rng = random.Random(seed)
    enc = hpack.Encoder()
    ref, ours = hpack.Decoder(), Decoder()
    for block in range(300):
        if rng.random() < 0.05:   # the peer's table shrinks or grows (our SETTINGS, acked)
            size = rng.choice([0, 64, 256, 4096])
            enc.header_table_size = size
            ref.max_allowed_table_size = ours.max_allowed_table_size = 4096
        data = enc.encode(_fields(rng, rng.randrange(1, 12)), huffman=rng.random() < 0.7)
        _same(ours.decode(data, raw=True), ref.decode(data, raw=True))
        assert list(ours.dynamic) == list(ref.header_table.dynamic_entries)
        assert ours.header_table_size == ref.header_table_size


def test_mutated_blocks_fail_alike_or_decode_alike():
    rng = random.Random(7)
    agreed = failed = 0
    for _ in range(3000):
        enc = hpack.Encoder()   # fresh tables on both sides: the block stands alone
        ref, ours = hpack.Decoder(max_header_list_size=600), Decoder(max_header_list_size=600)
        for d in (ref, ours):
            d.max_allowed_table_size = 4096
        data = bytearray(enc.encode(_fields(rng, rng.randrange(1, 8)), huffman=rng.random() < 0.5))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)):]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        try:
            want = ref.decode(bytes(data), raw=True)
        except HPACKError as e:
            with pytest.raises(HPACKError) as got:
                ours.decode(bytes(data), raw=True)
            # the classes h2 tells apart: an oversized list is a DoS, the rest protocol errors
            assert isinstance(got.value, OversizedHeaderListError) == isinstance(e, OversizedHeaderListError)
            failed += 1
            continue
        _same(ours.decode(bytes(data), raw=True), want)
        assert list(ours.dynamic) == list(ref.header_table.dynamic_entries)
        agreed += 1
    assert agreed > 300 and failed > 300, (agreed, failed)


def test_decoder_errors_are_hpacks():
    d = Decoder()
    with pytest.raises(InvalidTableIndex):
        d.decode(b"\x80")                   # index 0
    with pytest.raises(InvalidTableIndex):
        d.decode(b"\xbe")                   # 62: the dynamic table is empty
    with pytest.raises(HPACKError):
        d.decode(b"\x41\x05abc")            # truncated value
    with pytest.raises(HPACKError):
        d.decode(b"\x82\x3f\xe1\x1f")       # a size update after a field
    with pytest.raises(InvalidTableSizeError):
        d.decode(b"\x3f\xe2\x1f")           # 4097 > the 4096 we allowed
    small = Decoder(max_header_list_size=40)
    with pytest.raises(OversizedHeaderListError):
        small.decode(b"\x82\x84")           # :method GET (42) + :path / (38)


def test_raw_false_gives_text_tuples():
    assert Decoder().decode(b"\x82", raw=False) == [HeaderTuple(":method", "GET")]


@pytest.mark.parametrize("seed", range(4))
def test_encoder_output_reads_back_exactly_in_hpack(seed):
    rng = random.Random(100 + seed)
    ours, ref = Encoder(), hpack.Decoder()
    for _ in range(300):
        if rng.random() < 0.1:   # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice([0, 100, 4096, 8192])
            ours.header_table_size = size
            ref.max_allowed_table_size = size
        fields = _fields(rng, rng.randrange(0, 12))
        _same(ref.decode(ours.encode(fields), raw=True), fields)
        assert not ref.header_table.dynamic_entries   # we never index


def test_encoder_sizes_and_shapes():
    e = Encoder()
    assert e.encode([(b":method", b"GET"), (b":status", b"200")]) == b"\x82\x88"
    assert e.encode([(b"content-type", b"text/plain")]) == b"\x0f\x10\x0atext/plain"
    assert e.encode([(b"x-a", b"1")]) == b"\x00\x03x-a\x011"
    assert e.encode([NeverIndexedHeaderTuple(b"authorization", b"s")]) == b"\x1f\x08\x01s"
    e.header_table_size = 0      # a peer that wants no table: announced once, first
    assert e.encode([(b":status", b"200")]) == b"\x20\x88"
    assert e.encode([(b":status", b"200")]) == b"\x88"
    e.header_table_size = 100
    e.header_table_size = 50
    e.header_table_size = 200    # the smallest since the last block, then the last
    assert e.encode([]) == b"\x3f\x13\x3f\xa9\x01"
