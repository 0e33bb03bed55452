"""Stage: the forward pass. Every step is placed once, heavy atoms first, then hydrogens; in each
phase rank by rank along every molecule's bead order, all molecules in one batch per rank. Atoms
not yet placed stand at their beads, so the forward pass decides each chiral centre's handedness
when the first of its atoms is placed; each candidate is first translated as a whole so that its
bonds to atoms already in place come out at b0 on average (`LocalPrior.junction_shift`): the
generated shape is kept, and the joints between beads, which carry the backbone dihedral, are
right before the ranking sees them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..environment import FORWARD, SystemPlan
from .state import FrameState, place_schedule


def forward_schedule(plan: SystemPlan) -> list[np.ndarray]:
    """Step batches of the forward pass: heavy phase, then hydrogens; in each, rank by rank."""
    rank = plan.bead_rank[plan.step_bead]
    return [
        np.flatnonzero((plan.step_heavy == heavy) & (rank == k))
        for heavy in (True, False)
        for k in np.unique(rank[plan.step_heavy == heavy])
    ]


@dataclass(frozen=True)
class ForwardPass:
    orientations: int
    name: str = "forward"

    def __call__(self, state: FrameState) -> None:
        place_schedule(state, forward_schedule(state.plan), FORWARD, self.orientations)
