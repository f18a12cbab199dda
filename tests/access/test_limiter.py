"""The limiter for every secret: raced from many threads, rotated over addresses and networks, its back-off and
its memory bound."""
from __future__ import annotations

import threading

import pytest

from steno_exportd.access.limiter import MAX_KEYS, Limiter, LimiterPolicy, client_of, network_of
from steno_exportd.errors import Throttled

POLICY = LimiterPolicy(per_address=5, per_network=12, overall=30, longest=320.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def race(limiter: Limiter, clients: list[str]) -> int:
    """Every client tries once, all at the same moment (threads behind a barrier); how many got an attempt."""
    got, barrier = [], threading.Barrier(len(clients))

    def one(c: str) -> None:
        barrier.wait()
        try:
            limiter.acquire(c).failed()
            got.append(c)
        except Throttled:
            pass
    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(got)


def test_concurrent_guesses_from_one_address_get_exactly_the_allowance():
    assert race(Limiter(POLICY), ["192.168.1.7"] * 200) == 5


def test_rotating_addresses_meet_the_network_and_the_overall_limit():
    lim = Limiter(POLICY)
    assert race(lim, [f"192.168.1.{i}" for i in range(1, 201)]) == 12          # one /24
    assert race(lim, [f"10.{i}.{j}.1" for i in range(20) for j in range(20)]) == 30 - 12   # 400 /24s
    v6 = Limiter(POLICY)
    assert race(v6, [f"fd00:1:2:3::{i:x}" for i in range(1, 201)]) == 12       # one /64
    assert network_of("fd00:1:2:3:ffff::1") == "fd00:1:2:3::/64" and network_of("::ffff:10.1.2.3") == "10.1.2.0/24"


def test_the_client_a_cap_counts_is_an_ipv4_address_in_either_form_or_an_ipv6_64():
    assert client_of("10.0.0.5") == client_of("::ffff:10.0.0.5") == "10.0.0.5"
    assert client_of("fd00:1:2:3::1") == client_of("fd00:1:2:3:ffff::9%eth0") == "fd00:1:2:3::/64"
    assert client_of("10.0.0.6") != client_of("10.0.0.5") and client_of("") == ""


def test_back_off_doubles_up_to_the_longest_and_a_right_secret_clears_the_address():
    clock = Clock()
    lim = Limiter(LimiterPolicy(per_address=5, per_network=1000, overall=1000, longest=320.0), clock)
    for _ in range(5):
        lim.acquire("10.0.0.1").failed()
    waits = []
    for _ in range(7):
        with pytest.raises(Throttled) as e:
            lim.acquire("10.0.0.1")
        waits.append(e.value.retry_after)
        clock.now += lim.locked_for("10.0.0.1")
        lim.acquire("10.0.0.1").failed()
    assert waits == [20, 40, 80, 160, 320, 320, 320], waits               # longest/16, doubling, capped
    clock.now += 320
    lim.acquire("10.0.0.1").succeeded()
    assert lim.locked_for("10.0.0.1") == 0
    for _ in range(4):                                                     # the full allowance again
        lim.acquire("10.0.0.1").failed()


def test_a_cancelled_attempt_is_given_back_and_other_secrets_use_the_same_limiter():
    lim = Limiter(POLICY)
    for _ in range(20):
        lim.acquire("dbus:uid=1000").cancelled()                           # a caller that is no IP address
    for _ in range(5):
        lim.acquire("dbus:uid=1000").failed()
    with pytest.raises(Throttled):
        lim.acquire("dbus:uid=1000")


def test_memory_is_bounded_under_a_scan_of_addresses():
    lim = Limiter(LimiterPolicy(per_address=5, per_network=10 ** 9, overall=10 ** 9))
    for i in range(3 * MAX_KEYS):
        lim.acquire(f"fd00::{i:x}:1").failed()
        lim.acquire(f"10.{i >> 8 & 255}.{i & 255}.{i >> 16 & 255}").failed()
    assert len(lim) <= MAX_KEYS + 2
