"""Time windows (`when:` on access rules, `window:` on approval rules): days, hours, zone.

A window is open on its `days` from the start of its `hours` to their end, in its time zone
(IANA names, daylight saving included, via `zoneinfo`). Hours whose end is not after their
start span midnight: `22:00-06:00` on `[fri]` is open from Friday 22:00 to Saturday 06:00.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator

from lockgate.config.common import Strict

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def _day(name: str) -> int:
    try:
        return DAYS.index(name.strip().lower()[:3])
    except ValueError:
        raise ValueError(f"unknown day {name!r} (expected one of: {', '.join(DAYS)})") from None


def parse_days(entries: list[str]) -> frozenset[int]:
    """`[mon-fri, sun]` → weekday numbers (Monday 0); a range may wrap (`fri-mon`)."""
    out: set[int] = set()
    for entry in entries:
        first, sep, last = entry.partition("-")
        a = _day(first)
        b = _day(last) if sep else a
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def parse_hours(text: str) -> tuple[int, int]:
    """`08:00-18:00` → minutes since midnight (start, end); `24:00` may end a window."""
    m = _HOURS.match(text.strip())
    if not m:
        raise ValueError(f"expected hours such as 08:00-18:00, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440:
        raise ValueError(f"not a time of day in {text!r}")
    if start == end:
        raise ValueError(f"hours {text!r} open and close at the same time")
    return start, end


class TimeWindow(Strict):
    """When something is allowed: `{days: [mon-fri], hours: "08:00-18:00", timezone: …}`."""

    days: list[str] = ["mon-sun"]
    hours: str = "00:00-24:00"
    timezone: str = "UTC"

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one day (or leave `days` out: every day)")
        parse_days(v)
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        parse_hours(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (an IANA name such as Europe/Berlin; without a "
                "system time zone database, install the `tzdata` package)"
            ) from None
        return v

    @cached_property
    def _compiled(self) -> tuple[frozenset[int], int, int, ZoneInfo]:
        start, end = parse_hours(self.hours)
        return parse_days(self.days), start, end, ZoneInfo(self.timezone)

    def contains(self, now: datetime) -> bool:
        """Whether the window is open at `now` (an aware datetime)."""
        days, start, end, zone = self._compiled
        local = now.astimezone(zone)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if start < end:
            return day in days and start <= minute < end
        # Spans midnight: the evening part belongs to the day it starts on.
        if minute >= start:
            return day in days
        return minute < end and (day - 1) % 7 in days

    def describe(self) -> str:
        """`mon-fri 08:00-18:00 (Europe/Berlin)`, for messages."""
        return f"{','.join(self.days)} {self.hours} ({self.timezone})"

    def local_time(self, now: datetime) -> str:
        """`now` where the window is: `Sat 10:12`."""
        return now.astimezone(self._compiled[3]).strftime("%a %H:%M")

    def closed_message(self, now: datetime) -> str:
        """`open mon-fri 08:00-18:00 (Europe/Berlin); it is Sat 10:12 there`."""
        return f"open {self.describe()}; it is {self.local_time(now)} there"
