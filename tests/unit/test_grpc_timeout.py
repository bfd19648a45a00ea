"""grpc_timeout.py: the grpc-timeout header both ways and the deadline rules, in Envoy's
milliseconds (Grpc::Common, refreshDurationTimeout, finalTimeout)."""

from __future__ import annotations

import pytest

from proxy.router.grpc_timeout import (MaxStreamDuration, format_grpc_timeout, legacy_grpc_timeout_ms,
                                       parse_grpc_timeout, stream_duration_ms)


@pytest.mark.parametrize("value,ms", [
    (b"1H", 3_600_000), (b"2M", 120_000), (b"5S", 5000), (b"300m", 300), (b"1500u", 2),
    (b"1000u", 1), (b"1n", 1), (b"0m", 0), (b"99999999S", 99_999_999_000),
    (b"100000000m", None), (b"m", None), (b"", None), (None, None), (b"10x", None),
    (b"-5m", None), (b"1.5S", None),
])
def test_parse(value, ms):
    assert parse_grpc_timeout(value) == ms


@pytest.mark.parametrize("ms,text", [
    (0, b"0m"), (400, b"400m"), (99_999_999, b"99999999m"), (100_000_000, b"100000S"),
    (99_999_999 * 1000 * 60 * 60 * 10, b"99999999H"),
])
def test_format(ms, text):
    assert format_grpc_timeout(ms) == text


def test_stream_duration_rules():
    hdr = MaxStreamDuration(grpc_timeout_header_max=500, grpc_timeout_header_offset=100)
    assert stream_duration_ms(hdr, 0, 5000) == 400          # capped, then the offset
    assert stream_duration_ms(hdr, 0, 300) == 200
    assert stream_duration_ms(hdr, 0, 50) == 0              # offset past it: at once
    assert stream_duration_ms(hdr, 700, None) == 700        # no header: the HCM's
    assert stream_duration_ms(MaxStreamDuration(grpc_timeout_header_max=0), 0, 9000) == 9000
    assert stream_duration_ms(MaxStreamDuration(max_stream_duration=0), 700, None) is None
    assert stream_duration_ms(MaxStreamDuration(max_stream_duration=300), 700, 100) == 300
    assert stream_duration_ms(None, 0, 100) is None


def test_legacy_router_timeout():
    assert legacy_grpc_timeout_ms(500, 100, 300) == 200
    assert legacy_grpc_timeout_ms(500, 100, None) == 500    # no header: the cap
    assert legacy_grpc_timeout_ms(0, None, 1000) == 1000    # 0: no cap
    assert legacy_grpc_timeout_ms(0, None, None) == 0       # and no header: none
    assert legacy_grpc_timeout_ms(500, 400, 300) == 300     # an offset past it is not taken


def test_grpc_frames_are_counted_across_any_cut():
    from proxy.http.filters.grpc_stats import FrameCounter
    stream = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in (b"", b"hello", b"x" * 300))
    for cut in range(1, len(stream)):
        fc = FrameCounter()
        assert fc.inspect(stream[:cut]) + fc.inspect(stream[cut:]) == 3
    fc = FrameCounter()
    assert sum(fc.inspect(stream[i:i + 1]) for i in range(len(stream))) == 3
