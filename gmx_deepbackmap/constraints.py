"""Bond constraints: generated bond lengths brought onto the topology's b0 (and `[ constraints ]`).

The reference ensembles are run with constrained bonds, and the generator places atoms to about
0.01 nm, so the sampler puts the bonds back on their lengths once per frame, after the last sweep.
A plain projection (SHAKE, `project_bonds`) moves each bond's two atoms along the bond; in sPS
frames that doubled the angle energy of the generated structures and created close contacts
(`benchmarks/bench_stages.py`). `restore_bonds` therefore first moves the atoms so that the
bonds approach their lengths while the generated shape is kept as far as it can be: every bond
angle and torsion along the bond graph, and every close non-bonded distance (none may shrink).
It is no energy minimisation: no force-field energy enters, only b0, as in SHAKE, and the
generated geometry is the target. The projection then makes the lengths exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .analysis import frame_context
from .forms import geometry
from .pbc import image_shifts
from .topology import Topology, bond_paths

SHAKE_TOLERANCE = 1e-5  # relative bond-length deviation at which the projection stops (GROMACS shake-tol: 1e-4)
SHAKE_ITERATIONS = 200
# restore_bonds: weights of its objective, each term per unit of its natural scale (torsions: 1 per
# 1 - cos of their change); chosen on the sweep-2 structures of 4 held-out sPS frames (anchor 0-0.1,
# contact 0-10, angle 1-30, torsion 0.3-3 and range 0.25-0.3 scanned, scored by the angle, improper
# and LJ energies and the close pairs of benchmarks/bench_stages.py)
BOND_WEIGHT = 100.0  # per squared relative length error
ANGLE_WEIGHT = 10.0  # per squared radian
CONTACT_RANGE = 0.27  # nm: non-bonded pairs generated closer than this must not come closer
CONTACT_WEIGHT = 1.0  # per (0.01 nm)^2 that such a pair comes closer
ANCHOR_WEIGHT = 0.001  # per (0.01 nm)^2 of displacement: keeps the problem well posed, barely moves atoms
RESTORE_ITERATIONS = 60  # L-BFGS iterations: 30 and 100 give energies within 2 % of these


@dataclass(frozen=True)
class Constraints:
    """Bond lengths held fixed, edge-coloured: no two bonds of one colour share an atom."""

    pairs: torch.Tensor  # (n, 2) atom indices
    lengths: torch.Tensor  # (n,) nm
    colours: torch.Tensor  # (n,)
    inverse_mass: torch.Tensor  # (N,) 1/amu; 0 for massless particles (they never move)
    angles: torch.Tensor  # (a, 3) every path of 3 atoms along the constrained bonds
    torsions: torch.Tensor  # (t, 4) every path of 4 atoms along them
    excluded_keys: np.ndarray  # non-bonded exclusions as i * N + j (i < j), ascending

    @classmethod
    def from_bonds(
        cls, pairs: np.ndarray, lengths: np.ndarray, masses: np.ndarray, exclusions: np.ndarray | None = None
    ) -> Constraints:
        """Bonds `pairs` (n, 2) held at `lengths` (n,) nm, between atoms of `masses` (N,) amu;
        `exclusions` (e, 2), i < j: pairs that are not non-bonded neighbours (default: the bonds)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        masses = np.asarray(masses, dtype=np.float64)
        n = len(masses)
        inverse = np.divide(1.0, masses, out=np.zeros_like(masses), where=masses > 0)
        excluded = np.sort(pairs, axis=1) if exclusions is None else np.asarray(exclusions, dtype=np.int64)
        return cls(
            torch.from_numpy(pairs),
            torch.as_tensor(lengths, dtype=torch.float64),
            torch.from_numpy(_edge_colours(pairs, n)),
            torch.from_numpy(inverse),
            torch.from_numpy(bond_paths(pairs, n, 3)),
            torch.from_numpy(bond_paths(pairs, n, 4)),
            np.unique(excluded[:, 0] * n + excluded[:, 1]),
        )


def moving_only(constraints: Constraints, atoms: np.ndarray) -> Constraints:
    """The same constraints with every atom but `atoms` held in place: `project_bonds` then fixes
    only the bonds of those atoms, by moving them."""
    inverse = torch.zeros_like(constraints.inverse_mass)
    moving = torch.as_tensor(atoms, dtype=torch.int64)
    inverse[moving] = constraints.inverse_mass[moving]
    return replace(constraints, inverse_mass=inverse)


def bond_constraints(topology: Topology) -> Constraints:
    """Every bond (at its b0) and every `[ constraints ]` entry of the topology as a constraint."""
    return Constraints.from_bonds(
        np.concatenate([topology.bonds.indices, topology.constraints.indices]),
        np.concatenate([topology.bonds.params[:, 0], topology.constraints.params[:, 0]]),
        topology.masses,
        topology.exclusions,
    )


def _edge_colours(pairs: np.ndarray, n_atoms: int) -> np.ndarray:
    """Greedy edge colouring: each bond takes the lowest colour free at both of its atoms."""
    used: list[set[int]] = [set() for _ in range(n_atoms)]
    colours = np.empty(len(pairs), dtype=np.int64)
    for k, (i, j) in enumerate(pairs.tolist()):
        taken = used[i] | used[j]
        c = next(c for c in range(len(taken) + 1) if c not in taken)
        colours[k] = c
        used[i].add(c)
        used[j].add(c)
    return colours


def project_bonds(
    positions: torch.Tensor,
    box: torch.Tensor,
    constraints: Constraints,
    tolerance: float = SHAKE_TOLERANCE,
    iterations: int = SHAKE_ITERATIONS,
) -> torch.Tensor:
    """Positions (N, 3) with every constrained bond at its length.

    SHAKE-like Gauss-Seidel: one colour of bonds at a time (no shared atoms, so one vectorised
    update per colour), each bond corrected along its current direction and shared between its
    atoms by inverse mass (massless particles never move). Bonds across the periodic boundary are
    handled by minimum image. Returns a new tensor.
    """
    c = constraints
    weight = c.inverse_mass.to(positions)
    keep = weight[c.pairs].sum(1) > 0
    i, j = c.pairs[keep, 0], c.pairs[keep, 1]
    x = positions.clone()
    if not len(i):
        return x
    length, wi, wj = c.lengths[keep].to(x), weight[i], weight[j]
    shift = image_shifts(x[j] - x[i], box.to(x))
    colours = c.colours[keep]
    groups = [torch.nonzero(colours == k)[:, 0] for k in torch.unique(colours)]
    groups = [(i[g], j[g], shift[g], length[g, None], wi[g, None], wj[g, None]) for g in groups]
    for _ in range(iterations):
        for gi, gj, gs, gl, gwi, gwj in groups:
            d = x[gj] - x[gi] + gs
            r = d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            step = (r - gl) / (gwi + gwj) * d / r
            x[gi] += gwi * step
            x[gj] -= gwj * step
        if (((x[j] - x[i] + shift).norm(dim=-1) - length).abs() / length).max() <= tolerance:
            break
    return x


def restore_bonds(
    positions: torch.Tensor, box: torch.Tensor, constraints: Constraints, iterations: int = RESTORE_ITERATIONS
) -> torch.Tensor:
    """Positions (N, 3) with every constrained bond at its length and the generated shape kept.

    Minimises, from `positions`, the squared relative bond-length errors (weight `BOND_WEIGHT`)
    plus the squared changes of every bond-graph angle (radians, `ANGLE_WEIGHT`), 1 - cos of every
    torsion's change, the squared shrinkage of non-bonded pairs closer than `CONTACT_RANGE` (per 0.01 nm,
    `CONTACT_WEIGHT`) and a weak anchor to the start; then `project_bonds` makes the lengths
    exact. Massless particles, and atoms held by `moving_only`, stay put. Returns a new tensor.
    """
    c = constraints
    x0 = positions.detach().to(torch.float64)
    box = box.to(x0)
    context = frame_context(x0.numpy(), box.numpy(), c.excluded_keys, CONTACT_RANGE)
    contacts = torch.from_numpy(context.pairs)
    moves = c.inverse_mass > 0
    # terms among held atoms only are constant and left out (with `moving_only`: nearly all of them)
    bond_kept, contact_kept = moves[c.pairs].any(1), moves[contacts].any(1)
    chains = {
        "bond": c.pairs[bond_kept],
        "angle": c.angles[moves[c.angles].any(1)],
        "torsion": c.torsions[moves[c.torsions].any(1)],
        "contact": contacts[contact_kept],
    }
    lengths = c.lengths.to(x0)[bond_kept]
    contact0 = torch.from_numpy(context.distances)[contact_kept]
    shifts = {
        name: [image_shifts(x0[idx[:, k + 1]] - x0[idx[:, k]], box) for k in range(idx.shape[1] - 1)]
        for name, idx in chains.items()
    }

    def vectors(x: torch.Tensor, name: str) -> list[torch.Tensor]:
        idx = chains[name]
        return [x[idx[:, k + 1]] - x[idx[:, k]] + s for k, s in enumerate(shifts[name])]

    angle0, torsion0 = geometry(vectors(x0, "angle")), geometry(vectors(x0, "torsion"))
    movable = moves.to(x0)[:, None]
    delta = torch.zeros_like(x0, requires_grad=True)
    optimiser = torch.optim.LBFGS([delta], max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        x = x0 + delta * movable
        loss = (
            BOND_WEIGHT * ((geometry(vectors(x, "bond")) - lengths) / lengths).square().sum()
            + ANGLE_WEIGHT * (geometry(vectors(x, "angle")) - angle0).square().sum()
            + (1 - torch.cos(geometry(vectors(x, "torsion")) - torsion0)).sum()
            + CONTACT_WEIGHT * (torch.relu(contact0 - geometry(vectors(x, "contact"))) / 0.01).square().sum()
            + ANCHOR_WEIGHT * (delta / 0.01).square().sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(objective)
    return project_bonds((x0 + delta.detach() * movable).to(positions.dtype), box, c)
