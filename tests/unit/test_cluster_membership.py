"""Membership on the nodes topic: liveness by the observer's clock, the cleaner, expiry (§9.3)."""

from __future__ import annotations

from sockudo.node.membership import Membership, node_of

A = "node-a/1700000000000-aaaa"
B = "node-b/1700000000001-bbbb"
C = "node-c/1700000000002-cccc"


def test_a_lone_node_is_its_own_cleaner_and_never_expires() -> None:
    m = Membership(B, timeout_s=15)
    assert m.live(0) == [B]
    assert m.cleaner(1e9) == B
    assert m.expired(1e9) == []
    # Its own heartbeats only freshen its view.
    assert not m.view_fresh(0)
    m.heartbeat(B, "node-b", 10, now=100)
    assert m.view_fresh(107)
    assert not m.view_fresh(108)
    assert m.peers == {}


def test_the_smallest_live_incarnation_cleans_and_a_silent_one_expires() -> None:
    m = Membership(B, timeout_s=15)
    m.heartbeat(A, "node-a", 1000, now=0)
    m.heartbeat(C, "node-c", 1000, now=0)
    assert m.live(10) == [A, B, C]
    assert m.cleaner(10) == A
    # A keeps beating, C goes silent: nobody expires until C is older than the timeout.
    m.heartbeat(A, "node-a", 2000, now=14)
    assert m.expired(15) == []
    assert [p.incarnation for p in m.expired(15.1)] == [C]
    # A goes silent too: B is the live incarnation with the smallest id.
    assert m.live(30) == [B]
    assert m.cleaner(30) == B
    assert [p.incarnation for p in m.expired(30)] == [A, C]
    assert m.peers[A].last_heartbeat_ms == 2000


def test_stopping_expires_at_once_and_dead_is_sticky() -> None:
    m = Membership(B, timeout_s=15)
    m.heartbeat(A, "node-a", 1, now=0)
    m.stopping(A, now=1)
    assert m.live(1) == [B]
    assert [p.incarnation for p in m.expired(1)] == [A]
    assert m.dead(A, now=2) is False
    assert m.expired(2) == []
    # A late heartbeat of a dead incarnation does not bring it back.
    m.heartbeat(A, "node-a", 3, now=3)
    assert m.live(3) == [B]
    # A declaration naming this node's own incarnation tells it to fence.
    assert m.dead(B, now=4) is True


def test_a_declaration_of_an_unknown_incarnation_is_remembered() -> None:
    m = Membership(B, timeout_s=15)
    assert m.dead(C, now=0) is False
    assert m.peers[C].node_id == "node-c"
    m.heartbeat(C, "node-c", 1, now=1)
    assert m.live(1) == [B]
    m.prune(now=100, keep_s=50)
    assert C not in m.peers


def test_renaming_after_a_fence_leaves_the_old_incarnation_to_the_cleaner() -> None:
    m = Membership(A, timeout_s=15)
    m.heartbeat(A, "node-a", 1, now=0)
    new = "node-a/1700000009999-ffff"
    m.renamed(new, now=5)
    assert m.own == new
    assert not m.view_fresh(5)  # the new incarnation has not been heard yet
    assert [p.incarnation for p in m.expired(5)] == [A]
    assert m.cleaner(5) == new
    # A stopping or dead old incarnation never counts as live again.
    m.heartbeat(A, "node-a", 2, now=6)
    assert m.live(6) == [new]


def test_node_of_takes_everything_before_the_last_slash() -> None:
    assert node_of(A) == "node-a"
    assert node_of("eu/west/node-1/17-abcd") == "eu/west/node-1"


def test_the_start_time_comes_from_the_incarnation_id() -> None:
    from sockudo.node.cluster import started_at_ms

    assert started_at_ms(A) == 1700000000000
    assert started_at_ms("odd") is None
