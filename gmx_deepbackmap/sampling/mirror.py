"""Stage: chiral centres mirrored back. Every recorded chiral centre still in its mirror image is
reflected, with its hydrogen, through the plane of its heavy neighbours (`StereoCheck.mirror_inverted`:
its bonds keep their lengths; a centre left nearly flat is lifted off that plane, so that the 0.001 nm
rounding of .xtc files cannot invert it). The side groups around it, built for the inverted form,
and the hydrogens of the beads that own it and its neighbours are then re-placed
(`schedules.mirror_schedule`), and the bonds of the re-placed atoms restored with every other atom
held (sPS at 568 K, 3 frames: 2-6 centres mirrored per frame; re-placing the phenyl rings too, not
only the hydrogens, lowered the LJ energy by 130-520 kJ/mol and the angle energy by 160-290).
Preferring candidates that keep the handedness is not enough: where the generator builds a
centre's whole neighbourhood around the inverted form, every candidate inverts it again (sPS at
568 K: 3-6 centres of 324 per frame after the sweeps and repair rounds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constraints import moving_only, restore_bonds
from ..environment import GIBBS
from .schedules import mirror_schedule
from .state import FrameState, place_schedule


@dataclass(frozen=True)
class MirrorCentres:
    orientations: int
    name: str = "centres mirrored"

    def __call__(self, state: FrameState) -> None:
        stereo, plan, constraints = state.system.stereo, state.plan, state.system.constraints
        mirrored = stereo.mirror_inverted(state.positions, state.box)
        if not len(mirrored):
            return
        heavy, light = mirror_schedule(plan, state.hood.beads, mirrored, stereo.atoms[:, 0].numpy())
        place_schedule(state, heavy, GIBBS, self.orientations, score_hidden=True)
        place_schedule(state, light, GIBBS, self.orientations)
        if constraints is not None and heavy + light:  # the re-placed atoms onto their bonds, the rest held
            moved = plan.step_atoms[np.concatenate(heavy + light)]
            state.positions = restore_bonds(state.positions, state.box, moving_only(constraints, moved[moved >= 0]))
        stereo.mirror_inverted(state.positions, state.box)  # a re-placed neighbour may invert one again
