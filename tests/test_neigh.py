"""The datapath's neighbour table (ARP and ND suppression): bounds, bad input, churn."""
import random

import pytest

from fastpath import Datapath


def entries(dp: Datapath) -> set:
    return set(dp.neigh_entries())


def test_full_table_refuses_with_a_clear_error_and_changes_nothing() -> None:
    dp = Datapath(max_ports=4, neigh_table_size=3)
    assert dp.neigh_table_size == 3
    for i in range(3):
        dp.neigh_set(1, f"10.0.0.{i + 1}", f"02:00:00:00:00:0{i + 1}")
    before = entries(dp)
    with pytest.raises(OverflowError, match=r"the neighbour table is full \(3 entries\)"):
        dp.neigh_set(1, "10.0.0.9", "02:00:00:00:00:09")
    assert entries(dp) == before
    dp.neigh_set(1, "10.0.0.1", "02:00:00:00:00:0a")  # re-pointing needs no room
    assert (1, "10.0.0.1", "02:00:00:00:00:0a") in entries(dp)


@pytest.mark.parametrize("network, ip, mac, message", [
    (0, "10.0.0.1", "02:00:00:00:00:01", "network id 0 is out of range"),
    (1, "10.0.0.300", "02:00:00:00:00:01", "is not an IPv4 or IPv6 address"),
    (1, "224.0.0.1", "02:00:00:00:00:01", "is not a unicast address"),
    (1, "ff02::1", "02:00:00:00:00:01", "is not a unicast address"),
    (1, "0.0.0.0", "02:00:00:00:00:01", "is not a unicast address"),
    (1, "10.0.0.1", "01:00:5e:00:00:01", "is not a unicast MAC"),
    (1, "10.0.0.1", "00:00:00:00:00:00", "is not a unicast MAC"),
])
def test_bad_input_is_refused_and_changes_nothing(network: int, ip: str, mac: str, message: str) -> None:
    dp = Datapath(max_ports=4, max_networks=8)
    with pytest.raises(ValueError, match=message):
        dp.neigh_set(network, ip, mac)
    assert entries(dp) == set()


def test_churn_matches_a_dict() -> None:
    """Sets, re-points and deletes in a table kept nearly full: every entry stays findable
    (deletion shifts later members of a probe chain back)."""
    dp = Datapath(max_ports=4, neigh_table_size=64)
    rnd = random.Random(7)
    want: dict[tuple[int, str], str] = {}
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(1, 50)] + [f"fd00::{i:x}" for i in range(1, 50)]
    for _ in range(3000):
        key = (rnd.randint(1, 2), rnd.choice(ips))
        if rnd.random() < 0.45 and key in want:
            assert dp.neigh_delete(*key)
            del want[key]
        elif key in want or len(want) < 64:
            mac = f"02:00:00:00:{rnd.randint(0, 255):02x}:{rnd.randint(1, 255):02x}"
            dp.neigh_set(*key, mac)
            want[key] = mac
        else:
            assert not dp.neigh_delete(1, "192.0.2.1")  # never set
    assert entries(dp) == {(net, ip, mac) for (net, ip), mac in want.items()}
