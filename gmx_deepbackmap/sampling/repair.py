"""Stages: repair rounds, then the least strained frame. Each round re-places, under `REPAIR_ORIENTATIONS` turns, the
beads with a strained contact (one Lennard-Jones pair above `STRAINED_PAIR`) or a bent joint (one
angle or dihedral term above `STRAINED_TERM`) and, in the first `OUTLIER_ROUNDS`, those with a step
whose energy is an outlier among the copies of the same step in other molecules
(`schedules.repair_steps`). Energies are judged as the atoms stand before each round, hydrogens
included, and a repaired bead's heavy atoms are ranked seeing its molecule's other hydrogens, which
the network does not see: the strained contacts are mostly between a bead's heavy atoms and a
neighbouring bead's hydrogens, invisible to a Gibbs heavy-atom move. A round can also strain what
was not (a ring is ranked with its hydrogens hidden, and the hydrogens then follow the ring: all 71
held-out sPS frames at 568 K, one H-H pair at 0.064 nm after the last round), so the frame kept is
the least strained one the rounds pass through, strain being the summed excess of the contacts over
`STRAINED_PAIR` and of the terms over `STRAINED_TERM`. A round with nothing to repair ends them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import OUTLIER_ROUNDS, REPAIR_ORIENTATIONS, STRAINED_PAIR, STRAINED_TERM
from ..environment import GIBBS
from .schedules import repair_schedule, repair_steps, step_templates
from .state import FrameState, place_schedule, standing_energies


def _measure(state: FrameState, round_: int) -> list[np.ndarray]:
    """The batches to repair in round `round_` (1-based; empty: none) as the atoms stand, and the
    frame kept as the least strained one if it is."""
    energy, pair, term = standing_energies(state)
    strain = np.clip(pair - STRAINED_PAIR, 0, None).sum() + np.clip(term - STRAINED_TERM, 0, None).sum()
    if state.least_strained is None or strain <= state.least_strained[0]:
        state.least_strained = (strain, state.positions.clone())
    chosen = repair_steps(energy, pair, term, step_templates(state.plan), round_ <= OUTLIER_ROUNDS)
    return repair_schedule(state.plan, state.hood.beads, chosen)


@dataclass(frozen=True)
class RepairRound:
    """One round: measure, then re-place what is strained; a round with nothing to repair ends them."""

    number: int  # 1 for the first round
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"repair {self.number}")

    def __call__(self, state: FrameState) -> None:
        if state.repairs_over:
            return
        schedule = _measure(state, self.number)
        if not schedule:
            state.repairs_over = True
            return
        place_schedule(state, schedule, GIBBS, REPAIR_ORIENTATIONS, score_hidden=True)


@dataclass(frozen=True)
class LeastStrained:
    """After the last round: the least strained frame the rounds passed through is kept."""

    name: str = "least strained"

    def __call__(self, state: FrameState) -> None:
        if not state.repairs_over:
            _measure(state, 0)
        state.positions = state.least_strained[1]
