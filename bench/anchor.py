"""Ours beside its anchor: rounds that alternate who goes first, and the `name: value` lines of the ratio.

The machine is shared and its disk noisy, so each round times the anchor and ours back to back (the
anchor first in odd rounds), and the report gives both the ratio of the medians and the median of the
ratios taken within each round.
"""
from __future__ import annotations

import statistics
import sys
from typing import Callable, Sequence


def alternate(rounds: int, anchor: Callable[[int], float],
              *ours: Callable[[int], float]) -> tuple[list[float], list[list[float]]]:
    """Run ``rounds`` rounds of anchor(r) and each ours(r) (each returns its seconds); return the anchor's
    times and, per ours, its times."""
    theirs: list[float] = []
    mine: list[list[float]] = [[] for _ in ours]
    for r in range(rounds):
        if r % 2:
            theirs.append(anchor(r))
        for fn, out in zip(ours, mine):
            out.append(fn(r))
        if not r % 2:
            theirs.append(anchor(r))
    return theirs, mine


def rounds_line(label: str, series: Sequence[tuple[str, Sequence[float]]]) -> None:
    """Every round's seconds on stderr (the lines a reader checks the medians against)."""
    print(f"rounds{' ' + label if label else ''} (s): "
          + " | ".join(f"{name} " + " ".join(f"{x:.2f}" for x in xs) for name, xs in series), file=sys.stderr)


def report(prefix: str, mib: float, anchor_name: str, theirs: Sequence[float],
           ours: Sequence[tuple[str, Sequence[float]]], label: str = "",
           more: Sequence[tuple[str, Sequence[float]]] = ()) -> None:
    """Print MiB/s of the anchor and each of ours (medians), the ratio of the medians (higher: ours faster)
    and the median of the per-round ratios; the same against each of ``more``, other anchors timed in the same
    rounds (name, seconds)."""
    rounds_line(label, [*ours, (anchor_name, theirs), *more])
    for name, xs in ours:
        print(f"{prefix}_{name}_mib_s: {mib / statistics.median(xs):.1f}")
    for aname, ts in ((anchor_name, theirs), *more):
        t = statistics.median(ts)
        print(f"{prefix}_{aname}_mib_s: {mib / t:.1f}")
        for name, xs in ours:
            print(f"{prefix}_ratio_{name}_vs_{aname}: {t / statistics.median(xs):.2f}")
            print(f"{prefix}_ratio_{name}_vs_{aname}_per_round_median: "
                  f"{statistics.median(b / a for a, b in zip(xs, ts)):.2f}")
