"""Periodic boundaries in the strongly sheared triclinic boxes of the sPS data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmx_deepbackmap.pbc import minimum_image, neighbour_pairs, reduced_cell
from gmx_deepbackmap.structure import read_frames


def test_pairs_in_a_box_too_sheared_for_the_grid(sps_data):
    """t568 frame 77: MDAnalysis' grid refuses a 1.0 nm cut-off; the reduced cell finds every pair."""
    frame = read_frames(sps_data / "aa.gro", sps_data / "t568" / "aa.xtc", slice(77, 78))[0]
    cell, rotation = reduced_cell(frame.box)
    assert np.allclose(np.triu(cell, 1), 0) and np.linalg.det(cell) == pytest.approx(np.linalg.det(frame.box))
    pairs, shifts = neighbour_pairs(frame.positions, frame.box, 1.0)
    r = np.linalg.norm(frame.positions[pairs[:, 1]] - frame.positions[pairs[:, 0]] + shifts, axis=1)
    first = 50  # brute force over the pairs of the first atoms
    x = torch.as_tensor(frame.positions)
    d = minimum_image(x[None] - x[:first, None], torch.as_tensor(frame.box)).norm(dim=-1).numpy()
    i, j = np.nonzero((d < 0.999) & (np.arange(len(x))[None] > np.arange(first)[:, None]))
    found = pairs[(pairs[:, 0] < first) & (r < 0.999)]
    assert set(map(tuple, found.tolist())) == set(zip(i.tolist(), j.tolist()))
    assert r.max() < 1.0 + 1e-6
