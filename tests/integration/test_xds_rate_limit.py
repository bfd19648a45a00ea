"""`rate_limit_settings` on the ADS stream through the running proxy: the proxy's discovery
requests to the real gRPC control plane are paced by the token bucket (max_tokens, fill_rate),
nothing is lost (every version is ACKed in the end), and the waits are counted
(`control_plane.rate_limit_enforced`, `control_plane.pending_requests`)."""

from __future__ import annotations

import pytest

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError

from .harness import ProxyUnderTest
from .test_xds_grpc import CLA, CLUSTER, LISTENER, ROUTE, bootstrap, cla, free_port, initial, served_by, world  # noqa: F401

FILL = 5.0   # tokens per second: one request every 0.2 s once the bucket is empty


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_discovery_requests_are_paced_by_the_token_bucket(world, api_type):
    cp, ups, proxies = world
    lport = free_port()
    initial(cp, ups, lport)
    cfg = bootstrap(cp.port, api_type)
    cfg["dynamic_resources"]["ads_config"]["rate_limit_settings"] = {"max_tokens": 1, "fill_rate": FILL}
    p = ProxyUnderTest(cfg)
    proxies.append(p)
    assert served_by(lport) == "one"
    for i in range(3):   # a burst of EDS pushes: each answered with an ACK, paced
        cp.set(CLA, f"e{i + 2}", [cla("svc", ups["two" if i % 2 == 0 else "one"].port)])
    assert cp.wait(lambda: cp.acked(CLA, "e4"), 10)
    assert p.wait_for(lambda: served_by(lport) == "two", 5)
    times = sorted(r["at"] for r in cp.requests)
    assert len(times) >= 6
    # One token at a time at FILL per second: by the time the control plane read request i,
    # the proxy can have sent no more than the bucket allowed since the first, i.e. i - 1
    # requests need (i - 1) / FILL seconds (slack: one request, for the control plane's own
    # pauses, which deliver two paced requests at once, and 20 % for the clocks). An unpaced
    # burst arrives within milliseconds.
    since = [t - times[0] for t in times]
    assert all(s >= 0.8 * (i - 1) / FILL for i, s in enumerate(since)), since
    assert p.counters()["control_plane.rate_limit_enforced"] >= 1
    assert p.wait_for(lambda: p.gauges()["control_plane.pending_requests"] == 0, 5)


def test_rate_limit_settings_are_checked_by_path():
    cfg = bootstrap(1)
    ads = cfg["dynamic_resources"]["ads_config"]
    ads["rate_limit_settings"] = {"fill_rate": 0}
    with pytest.raises(ConfigError, match=r"ads_config\.rate_limit_settings\.fill_rate: must be a finite number greater than 0"):
        parse_bootstrap(cfg)
    ads["rate_limit_settings"] = {"max_tokens": -1}
    with pytest.raises(ConfigError, match=r"rate_limit_settings\.max_tokens"):
        parse_bootstrap(cfg)
    ads["rate_limit_settings"] = {"burst": 3}
    with pytest.raises(ConfigError, match=r"rate_limit_settings: unknown field \"burst\""):
        parse_bootstrap(cfg)
    cfg["dynamic_resources"]["cds_config"] = {"api_config_source": {
        "api_type": "REST", "cluster_names": ["xds_cluster"], "rate_limit_settings": {}}}
    del ads["rate_limit_settings"]
    with pytest.raises(ConfigError, match=r"cds_config\.api_config_source\.rate_limit_settings: only for gRPC"):
        parse_bootstrap(cfg)
