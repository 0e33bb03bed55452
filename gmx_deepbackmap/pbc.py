"""Periodic boundaries in general triclinic boxes (GROMACS convention: box vectors as rows,
lower-triangular, the data's xy angles range from 37 to 132 degrees).

Rounding fractional coordinates alone does not give the shortest image in strongly sheared
boxes, so `minimum_image` finishes with a search over the 27 neighbouring images. Functions take
torch tensors and broadcast over leading batch dimensions; they are differentiable in positions.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

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
    cross = torch.stack([torch.linalg.cross(box[..., 1, :], box[..., 2, :]),
                         torch.linalg.cross(box[..., 2, :], box[..., 0, :]),
                         torch.linalg.cross(box[..., 0, :], box[..., 1, :])], dim=-2)
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


def neighbour_pairs(positions: np.ndarray, box: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """All atom pairs i < j closer than `cutoff` (nm) under periodic boundaries.

    Returns the pairs (P, 2) and, per pair, the lattice shift (P, 3) in nm such that
    `x[j] - x[i] + shift` is the minimum-image displacement. The grid search is MDAnalysis'
    (triclinic aware); the shifts come from `minimum_image`.
    """
    from MDAnalysis.lib.distances import self_capped_distance

    from .structure import dimensions_from_box

    pos = np.ascontiguousarray(positions, dtype=np.float32) * 10.0
    pairs = self_capped_distance(pos, cutoff * 10.0, box=dimensions_from_box(box).astype(np.float32),
                                 return_distances=False)
    pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    x = torch.as_tensor(positions, dtype=torch.float64)
    b = torch.as_tensor(box, dtype=torch.float64)
    d = x[pairs[:, 1]] - x[pairs[:, 0]]
    return pairs, image_shifts(d, b).numpy()
