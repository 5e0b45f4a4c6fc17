"""Time windows: parsing, open and closed times across zones, midnight and daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from lockgate.config.windows import TimeWindow, parse_days, parse_hours


def _w(**kw: object) -> TimeWindow:
    return TimeWindow.model_validate(kw)


def test_days_and_ranges_including_wrapping() -> None:
    assert parse_days(["mon-fri"]) == frozenset(range(5))
    assert parse_days(["fri-mon"]) == frozenset({4, 5, 6, 0})
    assert parse_days(["sun", "Wednesday"]) == frozenset({6, 2})


def test_hours() -> None:
    assert parse_hours("08:00-18:30") == (480, 1110)
    assert parse_hours("22:00-06:00") == (1320, 360)
    assert parse_hours("00:00-24:00") == (0, 1440)


@pytest.mark.parametrize(
    "bad",
    [{"days": ["mon-fry"]}, {"days": []}, {"hours": "8-18"}, {"hours": "25:00-26:00"},
     {"hours": "08:00-08:00"}, {"timezone": "Mars/Olympus"}],
)  # fmt: skip
def test_bad_windows_are_refused_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _w(**bad)


def test_office_hours_in_berlin() -> None:
    w = _w(days=["mon-fri"], hours="08:00-18:00", timezone="Europe/Berlin")
    # Monday 23 Nov 2026, CET (UTC+1).
    assert w.contains(datetime(2026, 11, 23, 7, 0, tzinfo=UTC))  # 08:00 there
    assert not w.contains(datetime(2026, 11, 23, 6, 59, tzinfo=UTC))
    assert not w.contains(datetime(2026, 11, 23, 17, 0, tzinfo=UTC))  # 18:00 there: closed
    assert not w.contains(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))  # Sunday
    # Summer time (CEST, UTC+2): the same local hours.
    assert w.contains(datetime(2026, 7, 6, 6, 0, tzinfo=UTC))
    assert not w.contains(datetime(2026, 7, 6, 5, 59, tzinfo=UTC))
    msg = w.closed_message(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    assert msg == "open mon-fri 08:00-18:00 (Europe/Berlin); it is Sun 13:00 there"


def test_a_window_across_midnight_belongs_to_the_day_it_starts() -> None:
    w = _w(days=["fri"], hours="22:00-06:00")
    assert w.contains(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # Friday night
    assert w.contains(datetime(2026, 11, 28, 5, 59, tzinfo=UTC))  # Saturday morning
    assert not w.contains(datetime(2026, 11, 28, 6, 0, tzinfo=UTC))
    assert not w.contains(datetime(2026, 11, 27, 5, 0, tzinfo=UTC))  # Friday morning
