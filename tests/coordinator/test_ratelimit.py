"""coordinator.ratelimit: the sliding windows (pure, time is an argument)."""

from __future__ import annotations

from coordinator.ratelimit import Limits, RateLimiter

T0 = 1_800_000_000.0


def test_a_fresh_token_has_its_whole_minute() -> None:
    d = RateLimiter().peek("tok", Limits(3, 100), T0)
    assert (d.allowed, d.limit, d.remaining, d.reset, d.retry_after) == (True, 3, 3, T0, 0)


def test_the_minute_window_fills_then_slides() -> None:
    rl, lim = RateLimiter(), Limits(3, 100)
    got = [rl.hit("tok", lim, T0 + i) for i in range(3)]
    assert [d.remaining for d in got] == [2, 1, 0]
    assert all(d.allowed for d in got)
    assert got[-1].reset == T0 + 2 + 60  # the window is empty again after the newest hit

    refused = rl.hit("tok", lim, T0 + 10)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == 50  # the oldest hit (T0) leaves the window at T0 + 60
    assert refused.headers()["Retry-After"] == "50"

    assert rl.hit("tok", lim, T0 + 60.5).allowed  # T0 has aged out
    assert not rl.hit("tok", lim, T0 + 60.6).allowed


def test_a_refused_request_is_not_counted() -> None:
    rl, lim = RateLimiter(), Limits(1, 100)
    rl.hit("tok", lim, T0)
    for i in range(10):
        assert not rl.hit("tok", lim, T0 + 1 + i).allowed
    assert rl.hit("tok", lim, T0 + 60.01).allowed


def test_the_hour_window_binds_when_it_has_less_left() -> None:
    rl, lim = RateLimiter(), Limits(60, 5)
    for i in range(4):
        rl.hit("tok", lim, T0 + i * 120)  # a different minute each time
    d = rl.peek("tok", lim, T0 + 481)
    assert (d.limit, d.remaining) == (5, 1)
    assert d.reset == T0 + 360 + 3600
    rl.hit("tok", lim, T0 + 482)
    refused = rl.hit("tok", lim, T0 + 483)
    assert not refused.allowed and refused.limit == 5
    assert refused.retry_after == 3600 - 483


def test_tokens_are_independent_and_limits_are_per_token() -> None:
    rl = RateLimiter()
    assert rl.hit("a", Limits(1, 10), T0).allowed
    assert not rl.hit("a", Limits(1, 10), T0 + 1).allowed
    assert rl.hit("b", Limits(1, 10), T0 + 1).allowed
    assert rl.hit("a", Limits(5, 10), T0 + 2).allowed  # raised limit applies at once


def test_seed_rebuilds_the_windows_from_the_job_log() -> None:
    rl, lim = RateLimiter(), Limits(2, 100)
    rl.seed([("tok", T0 - 4000), ("tok", T0 - 30), ("tok", T0 - 10)])
    d = rl.peek("tok", lim, T0)
    assert not d.allowed and d.retry_after == 30


def test_forget_idle_drops_only_idle_tokens() -> None:
    rl, lim = RateLimiter(), Limits(1, 10)
    rl.hit("old", lim, T0)
    rl.hit("new", lim, T0 + 3000)
    rl.forget_idle(T0 + 3601)
    assert rl.peek("old", lim, T0 + 3601).remaining == 1
    assert rl.peek("new", lim, T0 + 3601).remaining == 1  # its minute passed, hour not
    assert not rl.hit("new", Limits(1, 1), T0 + 3601).allowed
