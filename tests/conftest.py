"""Shared fixtures: the sPS reference data and small GROMACS systems cut from it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.pbc import minimum_image

SPS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
CHAIN_ATOMS = 162  # atoms per PS1 chain


@pytest.fixture(scope="session")
def sps_data() -> Path:
    """The read-only sPS reference data folder (aa.gro, t568/aa.xtc, topology/, ...)."""
    if not (SPS_DATA / "aa.gro").is_file():
        pytest.skip(f"sPS reference data not found in {SPS_DATA}")
    return SPS_DATA


def gro_box(line: str) -> np.ndarray:
    """Box rows (nm) from a .gro box line (3 or 9 numbers)."""
    v = [float(x) for x in line.split()] + [0.0] * 6
    return np.array([[v[0], v[3], v[4]], [v[5], v[1], v[6]], [v[7], v[8], v[2]]])


def itp_bonds(itp: Path) -> np.ndarray:
    """0-based atom pairs of the `[ bonds ]` section of a one-molecule .itp."""
    pairs, section = [], None
    for line in itp.read_text().splitlines():
        line = line.split(";", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[] ").lower()
        elif section == "bonds" and line:
            pairs.append([int(w) - 1 for w in line.split()[:2]])
    return np.array(pairs)


def make_whole(positions: np.ndarray, box: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Positions of one molecule with every bond at its shortest image (walks the bond graph)."""
    neighbours: dict[int, list[int]] = {}
    for i, j in bonds:
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    out, placed, stack = positions.copy(), {0}, [0]
    while stack:
        i = stack.pop()
        for j in neighbours.get(i, []):
            if j not in placed:
                d = minimum_image(torch.as_tensor(positions[j] - positions[i]), torch.as_tensor(box))
                out[j] = out[i] + d.numpy()
                placed.add(j)
                stack.append(j)
    return out


@pytest.fixture
def one_chain(tmp_path, sps_data) -> tuple[Path, Path]:
    """One whole PS1 chain (the first of aa.gro) centred in a cubic box 3 nm wider than the chain,
    as (gro, top) in tmp_path; the top is the bundled sPS force field with 1 PS1 molecule."""
    for name in ("topol_PS1.itp", "posres.itp"):
        shutil.copy(bundled_path(f"sps/{name}"), tmp_path / name)
    top = tmp_path / "topol.top"
    text = bundled_path("sps/topol.top").read_text()
    top.write_text(re.sub(r"^PS1\s+\d+\s*$", "PS1    1", text, flags=re.MULTILINE))

    lines = (sps_data / "aa.gro").read_text().splitlines()
    atoms = lines[2:2 + CHAIN_ATOMS]
    xyz = np.array([[float(a[20:28]), float(a[28:36]), float(a[36:44])] for a in atoms])
    xyz = make_whole(xyz, gro_box(lines[-1]), itp_bonds(tmp_path / "topol_PS1.itp"))
    edge = float(np.ptp(xyz, axis=0).max()) + 3.0
    xyz += edge / 2 - (xyz.min(axis=0) + xyz.max(axis=0)) / 2
    gro = tmp_path / "chain.gro"
    body = [f"{a[:20]}{x:8.3f}{y:8.3f}{z:8.3f}" for a, (x, y, z) in zip(atoms, xyz)]
    gro.write_text("\n".join(["one PS1 chain", str(CHAIN_ATOMS), *body, f"{edge:10.5f}" * 3]) + "\n")
    return gro, top
