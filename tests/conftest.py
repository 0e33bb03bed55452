"""Shared fixtures: the sPS reference data and small GROMACS systems cut from it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.pbc import make_whole, unwrap_levels
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology

SPS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
CHAIN_ATOMS = 162  # atoms per PS1 chain


@pytest.fixture(scope="session")
def sps_data() -> Path:
    """The read-only sPS reference data folder (aa.gro, t568/aa.xtc, topology/, ...)."""
    if not (SPS_DATA / "aa.gro").is_file():
        pytest.skip(f"sPS reference data not found in {SPS_DATA}")
    return SPS_DATA


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
    atoms = lines[2 : 2 + CHAIN_ATOMS]
    frame = read_frames(sps_data / "aa.gro")[0]
    chain = torch.as_tensor(frame.positions[:CHAIN_ATOMS])
    xyz = make_whole(chain, torch.as_tensor(frame.box), unwrap_levels(read_topology(top))).numpy()
    edge = float(np.ptp(xyz, axis=0).max()) + 3.0
    xyz += edge / 2 - (xyz.min(axis=0) + xyz.max(axis=0)) / 2
    gro = tmp_path / "chain.gro"
    body = [f"{a[:20]}{x:8.3f}{y:8.3f}{z:8.3f}" for a, (x, y, z) in zip(atoms, xyz)]
    gro.write_text("\n".join(["one PS1 chain", str(CHAIN_ATOMS), *body, f"{edge:10.5f}" * 3]) + "\n")
    return gro, top
