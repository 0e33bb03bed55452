"""Stage: one Gibbs sweep. Every step is re-placed seeing all other atoms, heavy atoms then
hydrogens, one colour of non-neighbouring beads per batch (`FrameState.sweep_schedule`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..environment import GIBBS
from .state import FrameState, place_schedule


@dataclass(frozen=True)
class GibbsSweep:
    number: int  # 1 for the first sweep
    orientations: int
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"sweep {self.number}")

    def __call__(self, state: FrameState) -> None:
        place_schedule(state, state.sweep_schedule, GIBBS, self.orientations)
