"""Periodic boundaries in general triclinic boxes (GROMACS convention: box vectors as rows,
lower-triangular, the data's xy angles range from 37 to 132 degrees).

Rounding fractional coordinates alone does not give the shortest image in strongly sheared
boxes, so `minimum_image` finishes with a search over the 27 neighbouring images. Functions take
torch tensors and broadcast over leading batch dimensions; they are differentiable in positions.
`make_whole` moves the atoms of every molecule to the images nearest their bonded parents;
`box_from_dimensions`/`dimensions_from_box` convert to and from MDAnalysis' box format.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .topology import Topology

ANGSTROM_PER_NM = 10.0  # MDAnalysis' unit of length against GROMACS'
_SHIFTS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.float64)


def wrap_displacements(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Shift displacements by box vectors into the central (sheared) cell: z, then y, then x."""
    for k in (2, 1, 0):
        n = torch.round(d[..., k] / box[..., k, k])
        d = d - n[..., None] * box[..., k, :]
    return d


def box_widths(box: torch.Tensor) -> torch.Tensor:
    """Perpendicular widths of the cell (..., 3): no image can be closer than these."""
    volume = torch.linalg.det(box).abs()
    cross = torch.stack(
        [
            torch.linalg.cross(box[..., 1, :], box[..., 2, :]),
            torch.linalg.cross(box[..., 2, :], box[..., 0, :]),
            torch.linalg.cross(box[..., 0, :], box[..., 1, :]),
        ],
        dim=-2,
    )
    return volume[..., None] / cross.norm(dim=-1)


def minimum_image(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The shortest periodic image of each displacement d (..., 3) in box (..., 3, 3).

    After wrapping, a displacement no longer than half the narrowest cell width is already the
    shortest; only the others are compared with their 26 neighbouring images.
    """
    d = wrap_displacements(d, box)
    half_width = box_widths(box).min(-1).values / 2
    unsure = d.norm(dim=-1) > half_width.expand(d.shape[:-1])
    if not unsure.any():
        return d
    box_u = box.expand(*d.shape[:-1], 3, 3)[unsure]
    candidates = d[unsure][..., None, :] + _SHIFTS.to(d) @ box_u  # (U, 27, 3)
    best = candidates.square().sum(-1).argmin(-1)
    fixed = torch.take_along_dim(candidates, best[:, None, None], dim=-2).squeeze(-2)
    return d.index_put((unsure,), fixed) if d.requires_grad else d.masked_scatter(unsure[..., None], fixed)


def image_shifts(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The lattice vector that turns each displacement into its minimum image (no gradient)."""
    with torch.no_grad():
        return minimum_image(d, box) - d


def reduced_cell(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An equivalent, nearly rectangular cell of the same lattice and the rotation into it.

    Returns lower-triangular box rows (3, 3) of a Lagrange-reduced basis and the rotation Q
    (3, 3) that takes positions into that cell's frame (x @ Q). Grid searches need this for the
    strongly sheared sPS boxes (they refuse a 1.0 nm cut-off in some of them) and run faster in
    it.
    """
    basis = np.array(box, dtype=np.float64)
    if not (np.isfinite(basis).all() and abs(np.linalg.det(basis)) > 0):
        raise ValueError(f"box without volume: {basis.tolist()}")  # the reduction below would never end
    changed = True
    while changed:  # each change shortens a vector of a discrete lattice, so this ends
        changed = False
        for i, j in ((i, j) for i in range(3) for j in range(3) if i != j):
            k = np.round(basis[i] @ basis[j] / (basis[j] @ basis[j]))
            if k != 0:
                basis[i] -= k * basis[j]
                changed = True
    if np.linalg.det(basis) < 0:
        basis[2] = -basis[2]
    q, r = np.linalg.qr(basis.T)  # basis = r.T @ q.T, so basis @ q = r.T (lower-triangular)
    signs = np.sign(np.diag(r))
    return (r * signs[:, None]).T, q * signs


def box_from_dimensions(dimensions) -> np.ndarray:
    """MDAnalysis `[a, b, c, alpha, beta, gamma]` (Angstrom, degrees) to box rows in nm."""
    from MDAnalysis.lib.mdamath import triclinic_vectors

    if dimensions is None:
        return np.zeros((3, 3))
    return np.asarray(triclinic_vectors(dimensions), dtype=np.float64) / ANGSTROM_PER_NM


def dimensions_from_box(box: np.ndarray) -> np.ndarray:
    """Box rows in nm to MDAnalysis `[a, b, c, alpha, beta, gamma]`."""
    from MDAnalysis.lib.mdamath import triclinic_box

    b = np.asarray(box, dtype=np.float64) * ANGSTROM_PER_NM
    return np.asarray(triclinic_box(b[0], b[1], b[2]), dtype=np.float64)


def minimum_width(box: np.ndarray) -> float:
    """The narrowest perpendicular width (nm) of the lattice of `box`: that of its reduced cell,
    the cell in which the pair searches run (see `reduced_cell`)."""
    return float(box_widths(torch.as_tensor(reduced_cell(box)[0])).min())


def neighbour_pairs(positions: np.ndarray, box: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """All atom pairs i < j closer than `cutoff` (nm) under periodic boundaries.

    Returns the pairs (P, 2) and, per pair, the lattice shift (P, 3) in nm such that
    `x[j] - x[i] + shift` is the minimum-image displacement. The grid search is MDAnalysis',
    run in the `reduced_cell` of the box; the shifts come from `minimum_image`.
    """
    from MDAnalysis.lib.distances import self_capped_distance

    if not np.isfinite(positions).all():  # MDAnalysis' C grid would index memory with them
        raise ValueError("neighbour search over positions that are not finite")
    cell, rotation = reduced_cell(box)
    x = np.asarray(positions, dtype=np.float64) @ rotation
    pairs = self_capped_distance(
        (x * 10.0).astype(np.float32),
        cutoff * 10.0,
        box=dimensions_from_box(cell).astype(np.float32),
        return_distances=False,
    )
    pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    if len(pairs) and not (pairs[:, 0].min() >= 0 and pairs[:, 1].max() < len(x)):
        raise ValueError("the neighbour search returned atoms that do not exist")  # callers index with them
    xt = torch.as_tensor(x)
    d = xt[pairs[:, 1]] - xt[pairs[:, 0]]
    return pairs, image_shifts(d, torch.as_tensor(cell)).numpy() @ rotation.T


# --------------------------------------------------------------------------- whole molecules


def unwrap_levels(topology: Topology) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(atoms, their parents) per breadth-first level of every molecule's bond graph.

    Each molecule is walked from its first atom; atoms it cannot reach (fragments without bonds to
    the rest) hang from the first atom. Parents always lie one level up.
    """
    local = {name: _bfs_parents(m.n_atoms, m.bonds) for name, m in topology.molecule_types.items()}
    atoms, parents, levels = [], [], []
    for name, start in topology.molecules:
        parent, level = local[name]
        child = np.flatnonzero(level > 0)
        atoms.append(child + start)
        parents.append(parent[child] + start)
        levels.append(level[child])
    atoms_all, parents_all, levels_all = (np.concatenate(a) for a in (atoms, parents, levels))
    return [
        (torch.from_numpy(atoms_all[levels_all == k]), torch.from_numpy(parents_all[levels_all == k]))
        for k in range(1, int(levels_all.max(initial=0)) + 1)
    ]


def _bfs_parents(n_atoms: int, bonds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in np.asarray(bonds, dtype=np.int64).reshape(-1, 2).tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    parent = np.full(n_atoms, -1, dtype=np.int64)
    level = np.full(n_atoms, -1, dtype=np.int64)
    for root in range(n_atoms):
        if level[root] >= 0:
            continue
        parent[root], level[root] = (0, 1) if root else (-1, 0)
        frontier = [root]
        while frontier:
            nxt = []
            for a in frontier:
                for b in neighbours[a]:
                    if level[b] < 0:
                        parent[b], level[b] = a, level[a] + 1
                        nxt.append(b)
            frontier = nxt
    return parent, level


def make_whole(
    positions: torch.Tensor, box: torch.Tensor, levels: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Every atom moved to the image nearest its parent, level by level: molecules unbroken."""
    x = positions.clone()
    b = box.to(x)
    for atoms, parents in levels:
        x[atoms] = x[parents] + minimum_image(x[atoms] - x[parents], b)
    return x
