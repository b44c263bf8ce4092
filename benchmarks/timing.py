"""Side-by-side timing shared by the benchmarks: interleave the variants, report medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved_medians(steps: list[Callable[[], float]], repeats: int) -> list[float]:
    """Median seconds of each step (a call returning its own duration), after one warm-up call each.

    The steps take turns, so a slow spell of a shared machine falls on all of them alike.
    """
    for step in steps:
        step()  # warm-up: allocations, lazy initialisation
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            times[i].append(step())
    return [statistics.median(t) for t in times]
