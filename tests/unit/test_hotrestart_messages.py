"""ParentLogic (pure hot-restart protocol): version and epoch checks, request order, replies."""

from proxy.hotrestart.messages import (HOT_RESTART_VERSION, FrameDecoder, ParentLogic, ProtocolError,
                                       check_hello_reply, encode_frame)

import pytest


class FakeSide:
    epoch = 3
    original_start_time = 1000.0

    def listen_fds(self, address):
        return [7, 8] if address == "127.0.0.1:10000" else []

    def stats_counters(self):
        return {"http.x.downstream_rq_total": 5}, {"server.live": 1}


def hello(version=HOT_RESTART_VERSION, epoch=4):
    return {"type": "hello", "version": version, "epoch": epoch}


def test_version_mismatch_is_refused_with_both_versions_named():
    r = ParentLogic(FakeSide()).reply(hello(version="ftproxy.hr.0"))
    assert r.message["ok"] is False
    assert "version mismatch" in r.message["reason"] and "ftproxy.hr.0" in r.message["reason"]
    assert HOT_RESTART_VERSION in r.message["reason"]
    with pytest.raises(ProtocolError, match="version mismatch"):
        check_hello_reply(r.message)


def test_child_epoch_must_follow_parent_epoch():
    r = ParentLogic(FakeSide()).reply(hello(epoch=6))
    assert r.message["ok"] is False and "does not follow" in r.message["reason"]


def test_requests_before_hello_are_refused():
    logic = ParentLogic(FakeSide())
    r = logic.reply({"type": "listen_sockets", "address": "127.0.0.1:10000"})
    assert r.message["type"] == "error" and not r.fds


def test_after_hello_parent_hands_over_fds_stats_admin_and_drains():
    logic = ParentLogic(FakeSide())
    ok = logic.reply(hello())
    assert ok.message == {"type": "hello", "ok": True, "epoch": 3, "start_time": 1000.0}
    check_hello_reply(ok.message)
    socks = logic.reply({"type": "listen_sockets", "address": "127.0.0.1:10000"})
    assert socks.fds == [7, 8] and socks.message["count"] == 2
    assert logic.reply({"type": "listen_sockets", "address": "1.2.3.4:1"}).fds == []
    assert logic.reply({"type": "stats"}).message["counters"] == {"http.x.downstream_rq_total": 5}
    assert logic.reply({"type": "shutdown_admin"}).action == "shutdown_admin"
    assert logic.reply({"type": "drain"}).action == "drain"
    assert logic.reply({"type": "bogus"}).message["type"] == "error"


def test_frames_round_trip_across_split_reads():
    data = encode_frame({"type": "stats", "n": 1}) + encode_frame({"type": "drain"})
    dec = FrameDecoder()
    assert dec.feed(data[:5]) == []
    assert [m["type"] for m in dec.feed(data[5:])] == ["stats", "drain"]
