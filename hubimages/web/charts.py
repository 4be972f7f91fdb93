"""Chart geometry for SVG the templates draw (SPEC §10: no JavaScript, no CDN).

Bar lengths are percentages of the chart's width and text is placed in pixels, so a chart
fills any screen without its text shrinking. The templates give each chart a `<title>`
and a table with the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hubimages.lib.formatting import human_size

BAR_ROW = 46  # pixels per repository: its name, its bar, the untagged line
LABEL_CHARACTERS = 40
PLOT_WIDTH = 1000  # the line chart's drawing, stretched to the chart's width
PLOT_HEIGHT = 160
PLOT_TOP = 22  # pixels above the plot, for the top tick's label


@dataclass(frozen=True)
class Bar:
    name: str
    stored_bytes: int
    stale_reclaimable_bytes: int
    untagged_bytes: int
    top: int
    scale: int

    @property
    def label(self) -> str:
        """Long names end in "…" (the table beside the chart has them whole)."""
        if len(self.name) <= LABEL_CHARACTERS:
            return self.name
        return self.name[: LABEL_CHARACTERS - 1] + "…"

    @property
    def text_y(self) -> int:
        return self.top + 15

    @property
    def bar_y(self) -> int:
        return self.top + 21

    @property
    def line_y(self) -> int:
        return self.top + 36

    @property
    def stored_width(self) -> str:
        return _percent(self.stored_bytes, self.scale)

    @property
    def stale_width(self) -> str:
        return _percent(self.stale_reclaimable_bytes, self.scale)

    @property
    def untagged_width(self) -> str:
        return _percent(self.untagged_bytes, self.scale)


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    height: int


def repository_bars(rows: Sequence[dict]) -> BarChart:
    """One bar per repository row of the storage figures, in their order, all on the
    scale of the largest."""
    scale = max((row["stored_bytes"] for row in rows), default=0) or 1
    bars = [
        Bar(
            name=row["name"],
            stored_bytes=row["stored_bytes"],
            stale_reclaimable_bytes=row["stale_reclaimable_bytes"],
            untagged_bytes=row["untagged_bytes"],
            top=position * BAR_ROW,
            scale=scale,
        )
        for position, row in enumerate(rows)
    ]
    return BarChart(bars=bars, height=len(bars) * BAR_ROW)


def _percent(value: int, scale: int) -> str:
    """A bar's length; one that is not nothing shows at least a sliver."""
    if value <= 0:
        return "0"
    return f"{max(value / scale * 100, 0.4):.2f}%"


@dataclass(frozen=True)
class Tick:
    """A labelled mark on an axis: `position` is a percentage of the axis's length (x from
    the left, y from the top of the plot)."""

    position: float
    label: str
    anchor: str = "middle"  # SVG text-anchor: the ends keep their labels inside the chart

    @property
    def percent(self) -> str:
        return f"{self.position:.2f}%"

    @property
    def plot_y(self) -> float:
        """The tick's height in the plot's own units (PLOT_HEIGHT tall)."""
        return round(self.position / 100 * PLOT_HEIGHT, 1)

    @property
    def text_y(self) -> int:
        """Where a y tick's label sits in the chart, in pixels: just above its gridline
        (the plot starts PLOT_TOP pixels down)."""
        return round(PLOT_TOP + self.plot_y - 4)


@dataclass(frozen=True)
class LineChart:
    line: str  # polyline points
    area: str  # polygon points: the line closed along the bottom
    top_bytes: int
    first: datetime
    last: datetime
    count: int
    x_ticks: tuple[Tick, ...] = ()
    y_ticks: tuple[Tick, ...] = ()


# Steps for the time axis, shortest first, and how precise their labels are (s: seconds,
# m: minutes, d: days). Each is at most 2.5 times the one before, so the first step that
# gives at most MAX_X_TICKS ticks still gives two, nearly always.
TIME_STEPS = (
    *((timedelta(seconds=n), "s") for n in (1, 2, 5, 10, 15, 30)),
    *((timedelta(minutes=n), "m") for n in (1, 2, 5, 10, 15, 30)),
    *((timedelta(hours=n), "m") for n in (1, 2, 3, 6, 12)),
    *((timedelta(days=n), "d") for n in (1, 2, 4, 7, 14, 30, 61, 91, 182)),
    *((timedelta(days=365 * n), "d") for n in (1, 2, 5, 10, 20, 50, 100)),
)
# Few enough that their labels ("Mar 3 14:00") never overlap on a phone's 360 px.
MAX_X_TICKS = 4
Y_TICKS = 4  # gridlines above zero, about


def line_chart(points: Sequence[tuple[datetime, int]]) -> LineChart | None:
    """Bytes over time on a time axis, from zero to a round value at or above the largest;
    None without points. A single point draws a level line. The axes carry ticks: round
    byte values up the side, round times along the bottom, each label distinct."""
    if not points:
        return None
    first, last = points[0][0], points[-1][0]
    span = (last - first).total_seconds()
    top_value = max(value for _, value in points)
    y_ticks, top = _byte_ticks(top_value)
    coordinates = []
    for at, value in points:
        x = (at - first).total_seconds() / span * PLOT_WIDTH if span else 0.0
        y = (1 - value / top) * PLOT_HEIGHT
        coordinates.append((x, y))
    if len(coordinates) == 1 or not span:
        coordinates = [(0.0, coordinates[-1][1]), (float(PLOT_WIDTH), coordinates[-1][1])]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
    area = f"0,{PLOT_HEIGHT} {line} {PLOT_WIDTH},{PLOT_HEIGHT}"
    return LineChart(
        line,
        area,
        top_value,
        first,
        last,
        len(points),
        x_ticks=tuple(time_ticks(first, last)),
        y_ticks=tuple(y_ticks),
    )


def _byte_ticks(largest: int) -> tuple[list[Tick], int]:
    """Gridlines at round byte values (1, 2, 2.5 or 5 times a power of ten) from zero to the
    first at or above `largest`, and that top value; top to bottom."""
    step = _round_step(max(largest, 1) / Y_TICKS)
    count = max(1, math.ceil(largest / step)) if largest else 1
    top = step * count
    ticks = [
        Tick(position=(1 - value / top) * 100, label=human_size(value) if value else "0")
        for value in (step * n for n in range(count, -1, -1))
    ]
    return ticks, top


def _round_step(rough: float) -> int:
    magnitude = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= rough:
            return max(1, round(factor * magnitude))
    raise AssertionError("unreachable")


def time_ticks(first: datetime, last: datetime) -> list[Tick]:
    """Ticks at round times (whole minutes, hours, days…) between `first` and `last`, at
    most MAX_X_TICKS, each label distinct: as precise as the step (seconds, minutes, days),
    naming the day when the times span more than one and the year when more than one. When
    no two round times fall between them, the two ends; one tick when they are equal."""
    first, last = first.astimezone(UTC), last.astimezone(UTC)
    span = last - first
    if span <= timedelta(0):
        return [Tick(50.0, _time_label(first, "s", with_day=True))]
    with_year = first.year != last.year
    step, precision, start, count = _time_step(first, last)
    with_day = precision != "d" and first.date() != last.date()
    if count < 2:
        return _end_ticks(first, last, precision, with_day=with_day, with_year=with_year)
    ticks = []
    for n in range(count):
        at = start + n * step
        position = (at - first) / span * 100
        anchor = "start" if position < 10 else "end" if position > 90 else "middle"
        ticks.append(
            Tick(
                position, _time_label(at, precision, with_day=with_day, with_year=with_year), anchor
            )
        )
    return ticks


def _time_step(first: datetime, last: datetime) -> tuple[timedelta, str, datetime, int]:
    """The shortest step giving at most MAX_X_TICKS round times from `first` to `last`: the
    step, its labels' precision, the first round time and how many there are."""
    for step, precision in TIME_STEPS:
        start = _round_up(first, step)
        count = (last - start) // step + 1 if start <= last else 0
        if count <= MAX_X_TICKS:
            return step, precision, start, count
    return step, precision, start, count


def _end_ticks(
    first: datetime, last: datetime, precision: str, *, with_day: bool, with_year: bool
) -> list[Tick]:
    """The first and the last time, labelled as precisely as it takes to tell them apart."""
    for each, day in ((precision, with_day), ("s", with_day), ("s", True)):
        labels = [_time_label(at, each, with_day=day, with_year=with_year) for at in (first, last)]
        if labels[0] != labels[1]:
            return [Tick(0.0, labels[0], "start"), Tick(100.0, labels[1], "end")]
    return [Tick(50.0, labels[0])]


def _round_up(at: datetime, step: timedelta) -> datetime:
    """The first multiple of `step` (counted from midnight UTC, or from 1 January 1970 for
    steps of days) at or after `at`."""
    origin = datetime(1970, 1, 1, tzinfo=UTC)
    if step < timedelta(days=1):
        origin = at.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = at - origin
    steps = -(-elapsed // step)  # ceiling division of timedeltas
    return origin + steps * step


def _time_label(at: datetime, precision: str, *, with_day: bool, with_year: bool = False) -> str:
    day = f"{at:%Y-%m-%d}" if with_year else f"{at:%b} {at.day}"
    if precision == "d":
        return day
    clock = f"{at:%H:%M:%S}" if precision == "s" else f"{at:%H:%M}"
    return f"{day} {clock}" if with_day else clock
