"""`LiveChart`: one telemetry field over a time window, drawn by plotext. The x axis is minutes
before now, so the chart reads the same whatever the clock says; it is redrawn only when its
data changed, so a quiet meter costs nothing."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot

from iotmeter_tui.view.format import num

LINE_COLOR = "cyan"
RANGE_COLOR = "gray"


class LiveChart(PlotextPlot):
    DEFAULT_CSS = """
    LiveChart { height: 1fr; min-height: 5; width: 1fr; }
    """

    def __init__(self, title: str, unit: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chart_title = title
        self.unit = unit
        self._shown: tuple[object, ...] | None = None
        self._draw([], [], [], [], window_min=5.0)

    def show_series(
        self,
        minutes: Sequence[float],
        means: Sequence[float],
        lows: Sequence[float],
        highs: Sequence[float],
        *,
        window_min: float,
    ) -> None:
        """Plot means (and the min..max band when buckets hold several points) against
        minutes before now (negative)."""
        key = (tuple(minutes), tuple(means), tuple(lows), tuple(highs), window_min)
        if key == self._shown:
            return
        self._shown = key
        self._draw(minutes, means, lows, highs, window_min=window_min)
        self.refresh()

    def _draw(self, minutes: Sequence[float], means: Sequence[float], lows: Sequence[float],
              highs: Sequence[float], *, window_min: float) -> None:
        plt = self.plt
        plt.clear_figure()
        latest = f" {num(means[-1])} {self.unit}" if means else ": no data"
        plt.title(f"{self.chart_title}{latest} · x: minutes ago")
        plt.xlim(-window_min, 0)
        if means:
            if any(lo != hi for lo, hi in zip(lows, highs, strict=False)):
                plt.plot(list(minutes), list(highs), color=RANGE_COLOR, marker="braille")
                plt.plot(list(minutes), list(lows), color=RANGE_COLOR, marker="braille")
            plt.plot(list(minutes), list(means), color=LINE_COLOR, marker="braille")
