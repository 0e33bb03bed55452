"""Stage: bond restoration. Where the reference ensemble has constrained bonds, generated bond
lengths are restored to their constraints once, over the whole frame, keeping the generated shape
(`constraints.restore_bonds`). Projecting after every batch instead, moving only the atoms just
placed, tripled the angle energy of sPS frames and left clashes: the generator then builds on
environments the projection has bent."""

from __future__ import annotations

from dataclasses import dataclass

from ..constraints import restore_bonds
from .state import FrameState


@dataclass(frozen=True)
class RestoreBonds:
    name: str = "bonds restored"

    def __call__(self, state: FrameState) -> None:
        state.positions = restore_bonds(state.positions, state.box, state.system.constraints)
