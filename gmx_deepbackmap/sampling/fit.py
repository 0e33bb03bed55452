"""Stage: every molecule turned and shifted rigidly onto its CG beads (`fit`). Atoms are placed
bead by bead, each bead's atoms in its own local frame, so a molecule as generated maps back onto
a copy of its CG beads that is shifted and slightly turned (cumene at 350 K, an early model: 0.028
nm RMS from the CG input, of which a rigid fit of each molecule leaves 0.010). The last stage only
makes local turns, which cannot move a molecule as a whole. A rigid motion changes no bond, angle
or dihedral and no contact within the molecule; the contacts between molecules it shifts by a
fraction of their range, and the last stage that follows samples them again.

The fit is least squares over the molecule's beads, weighted alike (the CG RMS distance weighs them
alike). The rotation is found by Gauss-Newton on the rotation vector with a small ridge: for a
molecule of one bead it is none, and for beads on a line the turn about the line, which the beads
do not fix, is none too (the closed-form Kabsch rotation is arbitrary there)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mapping import Mapping
from ..pbc import make_whole, minimum_image
from ..thermal import turn
from .state import FrameState

ITERATIONS = 4  # Gauss-Newton steps: the turns are a few degrees, so each step gains digits
RIDGE = 1e-6  # nm^2: keeps the turns the beads do not fix at zero


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) matrices [v]x with [v]x w = v x w."""
    zero = torch.zeros_like(v[:, 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)


def _matrices(rotation: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) rotation matrices of rotation vectors (n, 3)."""
    basis = torch.eye(3, dtype=rotation.dtype).expand(len(rotation), 3, 3)
    columns = turn(basis.transpose(0, 1).reshape(-1, 3), rotation.repeat(3, 1))  # the turned basis vectors
    return columns.reshape(3, -1, 3).permute(1, 2, 0)


def group_means(points: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 3) the mean of each group's `points` (m, 3); `group` (m,) numbers them 0 to n - 1."""
    total = torch.zeros(n, 3, dtype=points.dtype).index_add_(0, group, points)
    count = torch.zeros(n, dtype=points.dtype).index_add_(0, group, torch.ones_like(points[:, 0]))
    return total / count[:, None]


def fit_rotations(moving: torch.Tensor, target: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 3, 3) rotation matrices that turn each group's `moving` points closest to its `target`
    points, in the least-squares sense; both (m, 3) are centred on their group's mean."""
    matrices = torch.eye(3, dtype=moving.dtype).repeat(n, 1, 1)
    ridge = RIDGE * torch.eye(3, dtype=moving.dtype)
    for _ in range(ITERATIONS):
        turned = (matrices[group] @ moving[:, :, None])[:, :, 0]
        jacobian = -_skew(turned)  # change of the turned points per small extra turn (rotation vector)
        normal = torch.zeros(n, 3, 3, dtype=moving.dtype).index_add_(0, group, jacobian.transpose(1, 2) @ jacobian)
        rhs = torch.zeros(n, 3, 1, dtype=moving.dtype).index_add_(
            0, group, jacobian.transpose(1, 2) @ (target - turned)[:, :, None]
        )
        matrices = _matrices(torch.linalg.solve(normal + ridge, rhs)[:, :, 0]) @ matrices
    return matrices


def fit_molecules(
    positions: torch.Tensor,
    box: torch.Tensor,
    cg: torch.Tensor,
    mapping: Mapping,
    levels: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Positions (N, 3) with each molecule moved rigidly so that its beads (mapped from the atoms)
    lie closest to `cg` (M, 3); `levels`: `pbc.unwrap_levels` of the topology. Every atom stays in
    the image of its owner bead's CG position, as the sampler keeps them."""
    whole = make_whole(positions, box, levels)
    mapped = mapping.cg_positions(whole, box, wrap=False)
    target = mapped - minimum_image(mapped - cg, box)  # the CG beads in the image of the whole molecule
    molecule = torch.from_numpy(mapping.bead_molecule)
    n = int(molecule.max()) + 1
    centre, goal = group_means(mapped, molecule, n), group_means(target, molecule, n)
    rotation = fit_rotations(mapped - centre[molecule], target - goal[molecule], molecule, n)
    owner = torch.from_numpy(mapping.atom_owner)
    of_atom = molecule[owner]
    moved = goal[of_atom] + (rotation[of_atom] @ (whole - centre[of_atom])[:, :, None])[:, :, 0]
    return cg[owner] + minimum_image(moved - cg[owner], box)


@dataclass(frozen=True)
class FitMolecules:
    name: str = "molecules fitted"

    def __call__(self, state: FrameState) -> None:
        system = state.system
        state.positions = fit_molecules(state.positions, state.box, state.cg, system.mapping, system.levels)
