"""The gRPC-Web wire format without sockets (proxy/grpc/web.py): Envoy's strict base64, a
base64 request body cut anywhere, each response message re-encoded on its own, the trailer
frame and grpc-message's percent-encoding. The expected bytes where they are Envoy's come
from case tests/differential/cases/filter_grpc_web.yaml (real Envoy 1.40's answers)."""

from __future__ import annotations

import base64
import random

import pytest

from proxy.grpc.web import (BAD_DATA, BAD_SIZE, BadBase64, TextRequestDecoder,
                            TextResponseEncoder, decode_base64, percent_encode, trailer_frame)


def _frame(payload: bytes, flags: int = 0) -> bytes:
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


# -- Envoy's Base64::decode ----------------------------------------------------------------------

@pytest.mark.parametrize("text, raw", [
    (b"AAAAAAVoZWxsbw==", b"\0\0\0\0\x05hello"),   # two pads
    (b"AAAAAANhYmM=", b"\0\0\0\0\x03abc"),         # one pad
    (b"AAAAAAFh", b"\0\0\0\0\x01a"),                # none
    (b"+/+/", b"\xfb\xff\xbf"),
])
def test_valid_base64_decodes(text, raw):
    assert decode_base64(text) == raw


@pytest.mark.parametrize("text, why", [
    (b"", "empty (Envoy returns an empty string: an error)"),
    (b"AAAAAAVoZWxsbw=", "length not a multiple of 4"),
    (b"AAAAAANhYmM=AAAAAANhYmM=", "padding before the end"),
    (b"AAAAAAVoZWx===", "three pads"),
    (b"====", "nothing but pads"),
    (b"AAAA*AVoZWxsbw==", "a character outside the alphabet"),
    (b"AAAA\nAVoZWxsbw=", "a newline"),
    (b"AAAAAAVoZWxsbx==", "spare bits set (two pads)"),
    (b"AAAAAANhYmN=", "spare bits set (one pad)"),
    (b"AA-_", "the URL-safe alphabet"),
])
def test_what_envoy_refuses_is_refused(text, why):
    assert decode_base64(text) is None, why


def test_decoding_matches_the_standard_decoder_on_canonical_input():
    rng = random.Random(7)
    for n in range(0, 64):
        raw = rng.randbytes(n)
        if raw:
            assert decode_base64(base64.b64encode(raw)) == raw


# -- a base64 request body in pieces -------------------------------------------------------------

def _feed_all(pieces: list[bytes]) -> bytes:
    dec = TextRequestDecoder()
    out = b""
    for k, piece in enumerate(pieces):
        got = dec.feed(piece, k == len(pieces) - 1)
        if got is not None:
            out += got
    return out


def test_a_text_body_cut_at_every_point_decodes_the_same():
    body = _frame(b"hello") + _frame(b"a longer second message")
    text = base64.b64encode(body)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 3):
            assert _feed_all([text[:i], text[i:j], text[j:]]) == body


def test_fewer_than_four_characters_wait_for_more():
    dec = TextRequestDecoder()
    assert dec.feed(b"AAA", False) is None
    assert dec.feed(b"AV", False) == b"\0\0\0"  # one group ("AAAA") decoded, "V" kept
    assert dec.pending == b"V"


def test_an_empty_end_passes_an_empty_end():
    assert TextRequestDecoder().feed(b"", True) == b""


def test_the_end_inside_a_group_is_bad_size():
    dec = TextRequestDecoder()
    dec.feed(b"AAAAAAVoZWxs", False)
    with pytest.raises(BadBase64) as e:
        dec.feed(b"bw=", True)
    assert e.value.details == BAD_SIZE


def test_padded_messages_in_separate_chunks_decode_but_not_in_one():
    """Envoy decodes what each chunk completes: a client that pads each message works when
    each arrives alone, and is refused when two arrive in one read (case
    text_two_padded_segments_in_one_read)."""
    one = base64.b64encode(_frame(b"abc"))
    assert one.endswith(b"=")
    assert _feed_all([one, one, b""]) == _frame(b"abc") * 2
    with pytest.raises(BadBase64) as e:
        _feed_all([one + one])
    assert e.value.details == BAD_DATA


# -- the response, message by message --------------------------------------------------------------

def test_each_whole_message_is_encoded_on_its_own_wherever_the_data_is_cut():
    frames = [_frame(b"a"), _frame(b"bc"), _frame(b""), _frame(b"x" * 300, flags=1)]
    body = b"".join(frames)
    want = b"".join(base64.b64encode(f) for f in frames)
    rng = random.Random(3)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), 4))
        enc = TextResponseEncoder()
        out = b""
        for a, b in zip([0, *cuts], [*cuts, len(body)]):
            got = enc.feed(body[a:b])
            if got is not None:
                out += got
        assert out == want
        assert enc.partial == b""


def test_a_message_flagged_other_than_compressed_passes_the_chunk_as_it_came():
    """Envoy's Grpc::Decoder stops at a bad flag without consuming the chunk: the raw chunk,
    then the messages decoded before the bad one (case text_response_bad_flag_after_a_message)."""
    chunk = _frame(b"a") + _frame(b"b", flags=0x80)
    assert TextResponseEncoder().feed(chunk) == chunk + base64.b64encode(_frame(b"a"))
    # ... and nothing at all when no message came before it (text_response_bad_flag_first).
    assert TextResponseEncoder().feed(_frame(b"b", flags=2)) is None


# -- trailers and grpc-message ---------------------------------------------------------------------

def test_trailer_frame_is_envoys():
    assert trailer_frame([(b"grpc-status", b"0"), (b"x-md", b"trailing")]) == (
        b"\x80\x00\x00\x00\x1egrpc-status:0\r\nx-md:trailing\r\n")
    assert trailer_frame([]) == b"\x80\x00\x00\x00\x00"


def test_grpc_message_is_percent_encoded_as_envoy_does():
    assert percent_encode("no gRPC here: 100% été ~\n".encode()) == (
        b"no gRPC here: 100%25 %C3%A9t%C3%A9 %7E%0A")
    plain = b"upstream connect error or disconnect/reset before headers."
    assert percent_encode(plain) is plain
