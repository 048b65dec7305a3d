"""The capture-job check (NULL or frozen max LSN while the log moves) and retention lag."""

from __future__ import annotations

import pytest
from dstream_mssql_cdc.health import CaptureMonitor, lag_warning

pytestmark = pytest.mark.unit

MAX = 0x0000002A000001F00003


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(timeout: float = 60.0) -> tuple[CaptureMonitor, Clock]:
    clock = Clock()
    return CaptureMonitor(timeout, settle=10.0, clock=clock), clock


def test_a_null_max_lsn_is_reported_at_once_then_again_only_after_the_timeout() -> None:
    mon, clock = monitor()
    report = mon.observe(None, None)
    assert report is not None
    assert report[0] == "warning"
    assert "capture job is not running" in report[1]
    assert "sys.fn_cdc_get_max_lsn() is NULL" in report[1]
    assert "MSSQL_AGENT_ENABLED=true" in report[1]
    assert "sp_cdc_start_job" in report[1]
    clock.now += 30
    assert mon.observe(None, None) is None  # not every poll
    clock.now += 31
    again = mon.observe(None, None)
    assert again is not None
    assert again[0] == "warning"


def test_a_max_lsn_frozen_while_the_log_moves_is_reported_after_the_timeout() -> None:
    mon, clock = monitor(timeout=60)
    assert mon.observe(MAX, 100) is None
    clock.now += 10  # settled: the log's end from now on is the baseline
    assert mon.observe(MAX, 105) is None
    clock.now += 20
    assert mon.observe(MAX, 200) is None  # moving, but only 30 s so far
    clock.now += 31
    report = mon.observe(MAX, 300)
    assert report is not None
    assert report[0] == "warning"
    assert "has stayed at 0000002A000001F00003 for 61s while the transaction log moved on" in report[1]
    assert isinstance(mon.problem, str)
    # The job catches up: the max LSN moves, and the recovery is said once.
    clock.now += 5
    assert mon.observe(MAX + 10, 310) == ("info", "the CDC capture job is capturing changes again")
    assert not mon.problem
    assert mon.observe(MAX + 10, 310) is None


def test_a_quiet_database_is_not_a_stopped_capture_job() -> None:
    mon, clock = monitor(timeout=60)
    for _ in range(20):  # ten minutes of polls: neither the max LSN nor the log moves
        assert mon.observe(MAX, 500) is None
        clock.now += 30
    assert mon.problem is None


def test_the_jobs_own_writes_right_after_a_capture_do_not_count_as_the_log_moving() -> None:
    mon, clock = monitor(timeout=60)
    mon.observe(MAX, 100)
    clock.now += 2
    assert mon.observe(MAX, 101) is None  # the job wrote its mapping row: the log moved a little
    clock.now += 10
    assert mon.observe(MAX, 101) is None  # baseline taken after settling
    for _ in range(10):
        clock.now += 30
        assert mon.observe(MAX, 101) is None


def test_without_the_logs_end_only_a_null_max_lsn_can_be_reported() -> None:
    mon, clock = monitor(timeout=60)
    for _ in range(10):
        assert mon.observe(MAX, None) is None
        clock.now += 60


def test_lag_close_to_the_retention_is_a_warning_that_says_what_to_do() -> None:
    assert lag_warning("dbo.Orders", 3000.0, 4320) is None
    assert lag_warning("dbo.Orders", None, 4320) is None
    assert lag_warning("dbo.Orders", 10**9, None) is None
    assert lag_warning("dbo.Orders", 10**9, 0) is None
    warning = lag_warning("dbo.Orders", 0.9 * 4320 * 60, 4320)
    assert warning is not None
    assert "dbo.Orders is 2.7d behind" in warning
    assert "retention of 3.0d (4320 minutes)" in warning
    assert "sp_cdc_change_job" in warning
    assert lag_warning("dbo.Orders", 0.79 * 60 * 60, 60) is None
    assert lag_warning("dbo.Orders", 0.80 * 60 * 60, 60) is not None
