"""The README's quick start, run verbatim: its commands succeed from the repository root and
write what it says."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.structure import read_frames

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The lines of the first code block under the README's "Quick start" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_quick_start_runs_verbatim(tmp_path):
    if shutil.which("gmx-dbm") is None or shutil.which("gmx") is None:
        pytest.skip("gmx-dbm or gmx not installed")
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")  # the commands use paths from the root
    commands = quick_start_commands()
    assert [shlex.split(c)[:2] for c in commands] == [
        ["gmx-dbm", "backmap"],
        ["gmx-dbm", "energy"],
        ["gmx-dbm", "map"],
        ["gmx-dbm", "baseline"],
    ]
    for command in commands:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    aa = (tmp_path / "aa.gro").read_text().splitlines()
    assert int(aa[1]) == 5832 and len((tmp_path / "energies.csv").read_text().splitlines()) == 2
    assert (tmp_path / "baseline.gro").is_file()
    given, again = (
        read_frames(path)[0] for path in (ROOT / "topologies/sps/example-cg.gro", tmp_path / "cg-again.gro")
    )
    d = minimum_image(torch.as_tensor(again.positions - given.positions), torch.as_tensor(given.box))
    assert float(d.square().sum(1).mean().sqrt()) < 0.03  # nm: the backmapped atoms sit on their beads
