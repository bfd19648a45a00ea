"""async_client.Deadlines: one timer for the timeouts of many requests of one length. Each
request not done by its deadline times out, in the order sent, no earlier than its own
deadline; a done request never does and is not kept; the timer re-arms for requests sent
after it went idle. Driven by a real Dispatcher and its clock."""

import time

from proxy.http.async_client import Deadlines
from proxy.threads.dispatcher import Dispatcher


class FakeRequest:
    """What Deadlines reads of an AsyncRequest: `done`, `_on_timeout()`; ending one calls
    `drop_done()` as AsyncRequest's release does."""

    def __init__(self, name: str, deadlines: Deadlines, log: list) -> None:
        self.name, self.deadlines, self.log = name, deadlines, log
        self.done = False
        self.sent = time.monotonic()

    def finish(self) -> None:
        self.done = True
        self.deadlines.drop_done()

    def _on_timeout(self) -> None:
        self.log.append((self.name, time.monotonic() - self.sent))
        self.finish()


def test_each_pending_request_times_out_in_order_at_its_deadline_and_done_ones_never():
    d = Dispatcher("t")
    q = Deadlines(d, 0.05)
    log: list = []
    a, b, c = (FakeRequest(n, q, log) for n in "abc")
    q.add(a)
    q.add(b)
    d.call_later(0.02, lambda: q.add(c))  # a later deadline
    d.call_later(0.01, a.finish)          # answered in time: no timeout
    d.call_later(0.3, d.exit)
    d.run()
    assert [name for name, _ in log] == ["b", "c"]
    assert all(waited >= 0.05 for _, waited in log)
    assert len(q) == 0


def test_requests_done_in_order_leave_at_once():
    d = Dispatcher("t")
    q = Deadlines(d, 30)
    log: list = []
    reqs = [FakeRequest(str(i), q, log) for i in range(5)]
    for r in reqs:
        q.add(r)
    reqs[2].finish()          # out of order: kept until the ones before it are done
    assert len(q) == 5
    reqs[0].finish()
    reqs[1].finish()
    assert len(q) == 2        # 0, 1 and 2 gone
    reqs[3].finish()
    reqs[4].finish()
    assert len(q) == 0 and log == []


def test_the_timer_rearms_for_a_request_sent_after_it_went_idle():
    d = Dispatcher("t")
    q = Deadlines(d, 0.03)
    log: list = []
    first = FakeRequest("first", q, log)
    q.add(first)
    d.call_later(0.01, first.finish)
    later = []
    d.call_later(0.1, lambda: (later.append(FakeRequest("later", q, log)), q.add(later[0])))
    d.call_later(0.4, d.exit)
    d.run()
    assert [name for name, _ in log] == ["later"] and log[0][1] >= 0.03
