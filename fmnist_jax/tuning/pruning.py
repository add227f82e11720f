"""Which trials a search stops early: Hyperband's brackets and asynchronous successive halving.

Pure functions of the config and the trials' results. Each trial belongs to a bracket, and each
bracket judges its trials at its rungs (epochs): at a rung a trial goes on only if it ranks among
the best 1/factor of its bracket's trials that have reached that rung so far, and when fewer than
`factor` have, only if it is the best of them (the rule of Optuna's SuccessiveHalvingPruner).
Trials that reach a rung in the same epoch are judged together, so a bracket whose trials start
together is Li et al.'s synchronous successive halving. Survivors go on training where they are.

- "asha": asynchronous successive halving (Li et al., 2020), one bracket with rungs at
  max_epochs / factor^k;
- "hyperband": Hyperband's brackets (Li et al., 2018), from the most exploratory to plain training,
  the trials dealt to them in turn as many as each bracket takes (9, 5 and 3 for 10 epochs and
  factor 3);
- "none": every trial trains `max_epochs` (or until early stopping stops it).
"""

from __future__ import annotations

import math

PRUNERS = ("none", "asha", "hyperband")


def hyperband_brackets(max_epochs: int, factor: int) -> list[list[tuple[int, int]]]:
    """Hyperband's brackets (Li et al., 2018), most exploratory first: each a list of rungs
    (trials, epochs), where each rung keeps the best 1/factor of the one before and trains it
    longer, up to `max_epochs`."""
    s_max = int(math.floor(math.log(max_epochs) / math.log(factor) + 1e-9))
    brackets = []
    for s in range(s_max, -1, -1):
        n = math.ceil((s_max + 1) / (s + 1) * factor**s)
        brackets.append(
            [
                (max(1, n // factor**i), max(1, round(max_epochs * factor ** (i - s))))
                for i in range(s + 1)
            ]
        )
    return brackets


def rungs(pruner: str, max_epochs: int, factor: int) -> list[list[int]]:
    """Each bracket's rungs: the epochs, before `max_epochs`, at which its trials are judged."""
    if pruner == "none":
        return [[]]
    brackets = [[epochs for _, epochs in b][:-1] for b in hyperband_brackets(max_epochs, factor)]
    return brackets[:1] if pruner == "asha" else brackets


def bracket_of(index: int, pruner: str, max_epochs: int, factor: int) -> int:
    """The bracket of trial `index`: Hyperband deals each bracket its number of trials in turn."""
    if pruner != "hyperband":
        return 0
    sizes = [b[0][0] for b in hyperband_brackets(max_epochs, factor)]
    position = index % sum(sizes)
    for bracket, size in enumerate(sizes):
        if position < size:
            return bracket
        position -= size
    raise AssertionError("unreachable")


def goes_on(value: float, rivals: list[float], factor: int, maximize: bool) -> bool:
    """Whether a trial with `value` at a rung goes on, where `rivals` are the values there of
    every trial of its bracket that has reached it (its own included)."""
    keep = max(1, len(rivals) // factor)
    threshold = sorted(rivals, reverse=maximize)[keep - 1]
    return value >= threshold if maximize else value <= threshold
