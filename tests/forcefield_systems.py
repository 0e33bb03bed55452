"""Small solvated peptides built with GROMACS' own tools in GROMACS' own force fields, for the
energy agreement tests and benchmark (`gmx pdb2gmx`, `editconf`, `solvate`; nothing cached).

The peptide is ACE-ALA-ALA-(C-terminal cap) written here from standard internal coordinates
(heavy atoms only; pdb2gmx adds the hydrogens); GROMOS 54A7 has no N-methyl cap, so it gets
ALA-ALA with its charged termini. Each force field's cap residue and water model is in `PEPTIDES`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Peptide:
    force_field: str
    c_cap: str | None  # residue name of the C-terminal N-methyl amide; None: charged termini
    water: str
    box: str  # editconf -bt


PEPTIDES = {
    "oplsaa": Peptide("oplsaa", "NAC", "tip3p", "dodecahedron"),
    "charmm27": Peptide("charmm27", "CT3", "tip3p", "cubic"),
    "amber99sb-ildn": Peptide("amber99sb-ildn", "NME", "tip3p", "cubic"),
    "gromos54a7": Peptide("gromos54a7", None, "spc", "cubic"),
}
# The other force fields GROMACS ships that pdb2gmx builds the peptide in (the benchmark's `--more`)
MORE_PEPTIDES = {
    **{f: Peptide(f, "NME", "tip3p", "cubic") for f in ("amber03", "amber94", "amber96", "amber99", "amber99sb")},
    "amberGS": Peptide("amberGS", "NME", "tip3p", "cubic"),
    **{f: Peptide(f, None, "spc", "cubic") for f in ("gromos43a1", "gromos43a2", "gromos45a3", "gromos53a5")},
    "gromos53a6": Peptide("gromos53a6", None, "spc", "cubic"),
}


def _place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """The atom at `bond` (A) from c, `angle` (degrees) b-c-new and dihedral a-b-c-new."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = [-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)]
    return c + d[0] * bc + d[1] * m + d[2] * n


def peptide_pdb(path: Path, c_cap: str | None) -> Path:
    """Heavy atoms of ACE-ALA-ALA-`c_cap` (or ALA-ALA), extended backbone, standard geometry (A)."""
    chain = [np.array([1.2, 2.0, 0.0]), np.array([0.0, 1.4, 0.0]), np.array([0.0, 0.0, 0.0])]
    for k in range(8):  # N CA C per residue: bond lengths, angles and dihedrals of an extended chain
        chain.append(_place(*chain[-3:], [1.33, 1.46, 1.52][k % 3], [116, 122, 111][k % 3], [180, -150, 150][k % 3]))
    bb = chain[1:]  # ACE CH3, ACE C, (N CA C) x 2, cap N, cap CH3
    atoms = [
        ("CH3", "ACE", 1, bb[0]),
        ("C", "ACE", 1, bb[1]),
        ("O", "ACE", 1, _place(bb[2], bb[0], bb[1], 1.23, 121, 180)),
    ]
    for r in range(2):
        n, ca, c, after = bb[2 + 3 * r : 6 + 3 * r]
        atoms += [("N", "ALA", 2 + r, n), ("CA", "ALA", 2 + r, ca), ("C", "ALA", 2 + r, c)]
        atoms += [("O", "ALA", 2 + r, _place(after, ca, c, 1.23, 121, 180))]
        atoms += [("CB", "ALA", 2 + r, _place(c, n, ca, 1.53, 110, -122))]
    if c_cap is None:
        atoms = [a for a in atoms if a[1] == "ALA"]
    else:
        atoms += [("N", c_cap, 4, bb[8]), ("CH3", c_cap, 4, bb[9])]
    lines = [
        f"ATOM  {k:5d} {name:<4s} {res:3s} A{resnr:4d}    {x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00  0.00"
        f"          {name[0]:>2s}"
        for k, (name, res, resnr, x) in enumerate(atoms, start=1)
    ]
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def gmx(args: list[str], cwd: Path, stdin: str = "", executable: str = "gmx", check: bool = True) -> str:
    """Run a gmx tool in `cwd`; its output, or (`check`) an error quoting the tool's last lines."""
    proc = subprocess.run(
        [executable, "-quiet", "-nobackup", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"gmx {args[0]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def _no_termini(args: list[str], cwd: Path) -> str:
    """pdb2gmx's answers for -ter that pick 'None' at both ends (capped chain): the menus differ
    by force field, so read them from a first run that answers 0 twice (AMBER asks nothing)."""
    output = gmx(args, cwd, "0\n0\n", check=False)
    choices = re.findall(r"^\s*(\d+): None\s*$", output, flags=re.M)
    return "".join(f"{c}\n" for c in choices)


def solvated_peptide(force_field: str, folder: Path, cmap: bool = False) -> tuple[Path, Path]:
    """(structure .gro, topology .top) of the force field's peptide in water, built in `folder`."""
    spec = {**PEPTIDES, **MORE_PEPTIDES}[force_field]
    pdb = peptide_pdb(folder / "peptide.pdb", spec.c_cap)
    args = ["pdb2gmx", "-f", pdb.name, "-ff", force_field, "-water", spec.water, "-ignh", "-o", "peptide.gro"]
    args += ["-p", "topol.top", *([] if cmap or force_field != "charmm27" else ["-nocmap"])]
    answers = ""
    if spec.c_cap is not None:
        args.append("-ter")
        answers = _no_termini(args, folder)
    gmx(args, folder, answers)
    gmx(["editconf", "-f", "peptide.gro", "-o", "box.gro", "-bt", spec.box, "-d", "0.9"], folder)
    gmx(["solvate", "-cp", "box.gro", "-cs", "spc216.gro", "-o", "system.gro", "-p", "topol.top"], folder)
    return folder / "system.gro", folder / "topol.top"


# one molecule with every bonded form, parameters inline and from *types (X wildcards, funct 9 blocks)
EVERY_FORM_TOP = """
[ defaults ]
1 2 yes 0.5 0.8333

[ atomtypes ]
A  6 12.011 0.0 A 0.35 0.3
B  1  1.008 0.0 A 0.25 0.1

[ bondtypes ]
A A 1 0.153 200000.0

[ angletypes ]
A A A 5 112.0 400.0 0.25 5000.0

[ dihedraltypes ]
X A A X 9 0.0 2.0 3
X A A X 9 180.0 1.0 2
A A A A 9 10.0 3.0 1
A A A A 9 20.0 0.5 2

[ moleculetype ]
M 3

[ atoms ]
1 A 1 M C1 1 0.2 12.011
2 A 1 M C2 1 -0.2 12.011
3 A 1 M C3 1 0.1 12.011
4 A 1 M C4 1 -0.1 12.011
5 B 1 M H5 1 0.0

[ bonds ]
1 2 1
2 3 1
3 4 1
4 5 2 0.11 1.2e7

[ angles ]
1 2 3 5
2 3 4 2 109.5 500.0
3 4 5 1 109.5 300.0

[ dihedrals ]
1 2 3 4 9
1 2 3 4 5 1.0 -2.0 3.0 0.5
2 3 4 5 3 1.0 2.0 -1.0 0.5 0.2 0.1
5 4 3 2 4 180 4.0 2
1 3 2 4 2 5.0 20.0

[ pairs ]
1 4 1

[ system ]
every form

[ molecules ]
M 1
"""
EVERY_FORM_XYZ = [(1.0, 1.0, 1.0), (1.15, 1.02, 1.01), (1.2, 1.16, 1.03), (1.35, 1.18, 1.11), (1.38, 1.27, 1.15)]


def every_form(folder: Path) -> tuple[Path, Path]:
    """(structure, topology) of one small molecule with every bonded form, in a 4 nm box."""
    (folder / "topol.top").write_text(EVERY_FORM_TOP)
    names = ["C1", "C2", "C3", "C4", "H5"]
    atoms = [
        f"{1:5d}{'M':<5s}{n:>5s}{k:5d}{x:8.3f}{y:8.3f}{z:8.3f}"
        for k, (n, (x, y, z)) in enumerate(zip(names, EVERY_FORM_XYZ), 1)
    ]
    (folder / "conf.gro").write_text("\n".join(["every form", "5", *atoms, "   4.00000   4.00000   4.00000"]) + "\n")
    return folder / "conf.gro", folder / "topol.top"
