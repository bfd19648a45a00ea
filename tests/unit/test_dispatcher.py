"""Dispatcher: timers, cross-thread post, exception containment (real threads, real eventfd)."""

import socket
import threading
import time

from proxy.threads.dispatcher import READ, Dispatcher


def run_in_thread(d: Dispatcher) -> threading.Thread:
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return t


def test_post_from_other_threads_runs_on_dispatcher_thread():
    d = Dispatcher("t")
    t = run_in_thread(d)
    seen = []
    done = threading.Event()

    def job(i):
        seen.append((i, threading.current_thread() is t))
        if len(seen) == 400:
            done.set()

    posters = [threading.Thread(target=lambda k=k: [d.post(lambda i=i: job(i)) for i in range(k * 100, k * 100 + 100)])
               for k in range(4)]
    for p in posters:
        p.start()
    for p in posters:
        p.join()
    assert done.wait(5)
    assert len(seen) == 400 and all(on_loop for _, on_loop in seen)
    d.exit()
    t.join(5)
    assert not t.is_alive()


def test_timers_fire_in_deadline_order_and_disable_cancels():
    d = Dispatcher("t")
    fired = []
    d.call_later(0.03, lambda: fired.append("b"))
    d.call_later(0.01, lambda: fired.append("a"))
    cancelled = d.call_later(0.02, lambda: fired.append("never"))
    cancelled.disable()
    d.call_later(0.05, d.exit)
    d.run()
    assert fired == ["a", "b"]


def test_timer_enable_rearms():
    d = Dispatcher("t")
    fired = []
    t = d.create_timer(lambda: fired.append(time.monotonic()))
    t.enable(10)
    t.enable(0.01)  # re-arming replaces the first deadline
    d.call_later(0.1, d.exit)
    start = time.monotonic()
    d.run()
    assert len(fired) == 1 and fired[0] - start < 1


def test_timer_enable_to_a_later_time_drops_the_earlier_deadline():
    """The other direction: a timer re-armed for later must not fire at its old, earlier
    deadline (a stale heap entry)."""
    d = Dispatcher("t")
    fired = []
    t = d.create_timer(lambda: fired.append(time.monotonic()))
    t.enable(0.02)
    t.enable(30)
    assert t.deadline is not None and t.deadline > time.monotonic() + 20
    d.call_later(0.3, d.exit)
    d.run()
    assert fired == []


def test_exception_in_callback_is_counted_and_loop_continues():
    d = Dispatcher("t")
    after = []

    def boom():
        raise RuntimeError("bug")

    d.post(boom)
    d.call_later(0.01, lambda: after.append(1))
    d.call_later(0.02, d.exit)
    d.run()
    assert d.unhandled_exceptions == 1
    assert after == [1]


def test_io_readiness_callback_gets_data():
    d = Dispatcher("t")
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def on_read(mask):
        assert mask & READ
        got.append(a.recv(100))
        d.exit()

    d.register(a, READ, on_read)
    b.send(b"hello")
    d.run()
    assert got == [b"hello"]
    a.close()
    b.close()
