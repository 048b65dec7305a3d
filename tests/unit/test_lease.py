"""The file lease: acquire, renew, expiry, takeover, fencing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from dstream.errors import LeaseLost
from dstream.state.lease import FileLease, LeaseGuard

if TYPE_CHECKING:
    from pathlib import Path


def test_one_holder_at_a_time_and_takeover_after_expiry(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "t.json", "t", "a", duration=1.0)
    b = FileLease(tmp_path / "t.json", "t", "b", duration=1.0)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert b.holder() == "a"
    a.renew()
    deadline = time.monotonic() + 5
    while not b.try_acquire():  # a stops renewing: its lease expires
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.generation == a.generation + 1
    with pytest.raises(LeaseLost, match="held by b"):
        a.renew()
    with pytest.raises(LeaseLost), a.fenced():
        pass  # a stale holder's checkpoint write is refused
    with b.fenced() as token:
        assert token == b.generation


def test_release_lets_a_standby_in_at_once(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "t.json", "t", "a", duration=60)
    b = FileLease(tmp_path / "t.json", "t", "b", duration=60)
    assert a.try_acquire()
    a.release()
    assert b.try_acquire()


def test_guard_deadline_is_local(tmp_path: Path) -> None:
    lease = FileLease(tmp_path / "t.json", "t", "a", duration=0.2)
    assert lease.try_acquire()
    guard = LeaseGuard(lease)
    guard.acquired(time.monotonic())
    guard.check()
    time.sleep(0.3)  # past the local deadline without a renewal
    assert not guard.valid()
    with pytest.raises(LeaseLost, match="deadline"):
        guard.check()


def test_the_store_refuses_a_checkpoint_from_an_older_lease_generation(tmp_path: Path) -> None:
    from dstream.state.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "state.db")
    store.save("t", {"v": 1}, "run-a", fence=1)
    store.save("t", {"v": 5}, "run-b", fence=2)  # the new holder
    with pytest.raises(LeaseLost, match="newer lease holder"):
        store.save("t", {"v": 3}, "run-a", fence=1)  # the old one woke up
    stored = store.load("t")
    assert stored is not None
    assert stored.checkpoint == {"v": 5}
    store.save("t", {"v": 6}, "run-c")  # without a lease: not fenced
    store.close()
