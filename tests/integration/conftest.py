import pytest

from .harness import EchoUpstream, ProxyUnderTest


@pytest.fixture
def upstream():
    u = EchoUpstream("service1")
    yield u
    u.close()


@pytest.fixture
def upstream2():
    u = EchoUpstream("service2")
    yield u
    u.close()


@pytest.fixture(params=["fast", "h11"])
def codec(request):
    """Each HTTP/1.1 codec in turn: httptools (the hot path) and h11 (the reference)."""
    return request.param


@pytest.fixture
def proxy_factory():
    started = []

    def make(config, **kw):
        p = ProxyUnderTest(config, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture(params=["fast", "h2"])
def h2_engine(request, monkeypatch):
    """Each downstream HTTP/2 engine in turn: ours (http2_frames, the hot path) and the h2
    library's (the reference); read when the proxy builds its HCM."""
    monkeypatch.setenv("FTPROXY_H2_CODEC", request.param)
    return request.param
