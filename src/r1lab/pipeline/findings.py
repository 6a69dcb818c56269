"""The paper's four findings as checks on the pipeline's results, over one seed or several.

    (a) R1-Zero: pure RL on the base gains >= 20 points pass@1, its reflection rate at least 3x
        its first evaluation's (and not 0)
    (b) R1 (stage 4) >= R1-Zero + 3 points pass@1, with readable outputs (>= 90% readable)
    (c) the distilled student >= the RL-only student + 5 points pass@1
    (d) stage 4 refuses more unsafe requests and helps with more general ones than stage 3, its
        pass@1 within 2 points of stage 3's

Each finding reads one number per seed, its *margin* (points above what it needs: (a) R1-Zero -
base - 20, ...), and is *shown* when every side condition holds on every seed and the mean margin
is positive and larger than the *spread*, the larger standard deviation over seeds of the two arms
compared (0 with one seed). Pure functions of plain dicts, so the rules are read and tested here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# A seed's results: row key -> metric -> value, fractions in [0, 1] (pass@1, readable, reflection,
# refused, helpful, ...); the r1_zero row also has "first_reflection" and "last_reflection", the
# reflection rate of R1-Zero's first (step 0) and last held-out evaluation during training.
SeedResults = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class Finding:
    claim: str
    arms: tuple[str, str]  # (row key, row key) whose spread bounds the margin
    metric: str  # the metric the spread is taken over
    margin: Callable[[SeedResults], float]  # points (percentage points) above the requirement
    holds: Callable[[SeedResults], bool]  # the side conditions


def _points(results: SeedResults, row: str, metric: str = "pass@1") -> float:
    return 100.0 * results.get(row, {}).get(metric, math.nan)


def _reflection_grew(results: SeedResults) -> bool:
    first = results.get("r1_zero", {}).get("first_reflection", math.nan)
    last = results.get("r1_zero", {}).get("last_reflection", math.nan)
    return last > 0 and last >= 3 * first


def _stage4_safer_and_more_helpful(results: SeedResults) -> float:
    """The smaller of the refusal and helpfulness gains of stage 4 over stage 3, in points."""
    return min(_points(results, "stage4_rl", "refused") - _points(results, "stage3_sft", "refused"),
               _points(results, "stage4_rl", "helpful") - _points(results, "stage3_sft", "helpful"))


FINDINGS: dict[str, Finding] = {
    "a": Finding("R1-Zero >= base + 20 points pass@1, reflection 3x its first evaluation's",
                 ("r1_zero", "base"), "pass@1",
                 lambda r: _points(r, "r1_zero") - _points(r, "base") - 20.0, _reflection_grew),
    "b": Finding("R1 >= R1-Zero + 3 points pass@1, readable", ("stage4_rl", "r1_zero"), "pass@1",
                 lambda r: _points(r, "stage4_rl") - _points(r, "r1_zero") - 3.0,
                 lambda r: r.get("stage4_rl", {}).get("readable", 0.0) >= 0.9),
    "c": Finding("distilled student >= RL-only student + 5 points pass@1", ("distilled", "rl_only"), "pass@1",
                 lambda r: _points(r, "distilled") - _points(r, "rl_only") - 5.0, lambda r: True),
    "d": Finding("stage 4 refuses and helps more than stage 3, pass@1 within 2 points",
                 ("stage4_rl", "stage3_sft"), "refused", _stage4_safer_and_more_helpful,
                 lambda r: abs(_points(r, "stage4_rl") - _points(r, "stage3_sft")) <= 2.0),
}


def sd(values: Sequence[float]) -> float:
    """Sample standard deviation; 0 for fewer than two values.

    >>> sd([1.0, 3.0])
    1.4142135623730951
    """
    return statistics.stdev(values) if len(values) > 1 else 0.0


def check(finding: Finding, seeds: Sequence[SeedResults]) -> dict:
    """{"margin": mean margin in points, "spread": the arms' larger sd in points, "shown": bool,
    "per_seed": [margins], "claim": ...} of one finding over the seeds' results."""
    margins = [finding.margin(r) for r in seeds]
    spread = max(sd([_points(r, arm, finding.metric) for r in seeds]) for arm in finding.arms)
    margin = statistics.fmean(margins) if margins else math.nan
    shown = bool(seeds) and all(finding.holds(r) for r in seeds) and margin > 0 and margin > spread
    return {"claim": finding.claim, "margin": margin, "spread": spread, "shown": shown, "per_seed": margins}


def comparisons(seeds: Sequence[SeedResults]) -> dict[str, dict]:
    """Every finding (a)-(d) checked over `seeds`."""
    return {key: check(finding, seeds) for key, finding in FINDINGS.items()}


def mean_and_sd(seeds: Sequence[SeedResults]) -> dict[str, dict[str, tuple[float, float]]]:
    """Row -> metric -> (mean, sd) over the seeds that have it (NaN values left out)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for results in seeds:
        for row, metrics in results.items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not math.isnan(value):
                    rows.setdefault(row, {}).setdefault(metric, []).append(float(value))
    return {row: {m: (statistics.fmean(v), sd(v)) for m, v in metrics.items()} for row, metrics in rows.items()}
