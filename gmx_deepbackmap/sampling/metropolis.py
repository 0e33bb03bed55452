"""Stage: Metropolis sweeps with the force field at the frames' temperature (`thermal`). Small
groups of atoms (hydrogens; atoms with their side groups about two of their neighbours; side
groups about the atom they hang from) turn rigidly, bond lengths kept and bead centres restrained
to the CG frame. The generator places atoms on a 0.15 nm grid and draws the right shapes with the
wrong thermal spread: on sPS it leaves ring hydrogens and ring carbons nearly ideal and the
backbone angles and dihedrals too strained, which the force field corrects exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..thermal import thermalise
from .state import FrameState


@dataclass(frozen=True)
class Thermalise:
    sweeps: int
    name: str = "thermalised"

    def __call__(self, state: FrameState) -> None:
        state.positions = torch.from_numpy(
            thermalise(
                state.positions,
                state.box.numpy(),
                state.system.thermal,
                state.temperature,
                self.sweeps,
                generator=state.angles,
                cg=state.cg.numpy(),
                centre_spread=state.config.centre_spread,
            )
        )
