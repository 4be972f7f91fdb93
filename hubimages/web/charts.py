"""Chart geometry for SVG the templates draw (SPEC §10: no JavaScript, no CDN).

Bar lengths are percentages of the chart's width and text is placed in pixels, so a chart
fills any screen without its text shrinking. The templates give each chart a `<title>`
and a table with the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

BAR_ROW = 46  # pixels per repository: its name, its bar, the untagged line
LABEL_CHARACTERS = 40
PLOT_WIDTH = 1000  # the line chart's drawing, stretched to the chart's width
PLOT_HEIGHT = 160
HEADROOM = 10


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
class LineChart:
    line: str  # polyline points
    area: str  # polygon points: the line closed along the bottom
    top_bytes: int
    first: datetime
    last: datetime
    count: int


def line_chart(points: Sequence[tuple[datetime, int]]) -> LineChart | None:
    """Bytes over time on a time axis, from zero to the largest value; None without
    points. A single point draws a level line."""
    if not points:
        return None
    first, last = points[0][0], points[-1][0]
    span = (last - first).total_seconds()
    top = max(value for _, value in points) or 1
    coordinates = []
    for at, value in points:
        x = (at - first).total_seconds() / span * PLOT_WIDTH if span else 0.0
        y = HEADROOM + (1 - value / top) * (PLOT_HEIGHT - HEADROOM)
        coordinates.append((x, y))
    if len(coordinates) == 1 or not span:
        coordinates = [(0.0, coordinates[-1][1]), (float(PLOT_WIDTH), coordinates[-1][1])]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
    area = f"0,{PLOT_HEIGHT} {line} {PLOT_WIDTH},{PLOT_HEIGHT}"
    return LineChart(line, area, top, first, last, len(points))
