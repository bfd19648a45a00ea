"""The token bucket pacing xDS requests (rate_limit_settings): full at the start, one token a
request, refilled at fill_rate up to max_tokens."""

from proxy.xds.token_bucket import TokenBucket


def test_the_bucket_starts_full_refills_at_its_rate_and_never_above_its_size():
    now = [100.0]
    b = TokenBucket(2, 4.0, clock=lambda: now[0])
    assert b.consume() and b.consume() and not b.consume()
    assert b.next_token() == 0.25
    now[0] += 0.1
    assert not b.consume() and abs(b.next_token() - 0.15) < 1e-9
    now[0] += 0.15
    assert b.consume() and not b.consume()
    now[0] += 60
    assert b.consume() and b.consume() and not b.consume()   # capped at max_tokens
