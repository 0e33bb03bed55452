"""The topology reader: the interactions grompp builds, and one-line errors naming file and line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gmx_deepbackmap.errors import InputError
from gmx_deepbackmap.topology import read_topology

SPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
RF_MDP = "\n".join(
    ["cutoff-scheme = Verlet", "coulombtype = reaction-field", "epsilon-rf = 2.5", "rcoulomb = 1.0", "rvdw = 1.0", ""]
)


def reference_copy(dest: Path, n_chains: int = 36) -> Path:
    """The published sPS topology in `dest`, with the posres.itp it includes but lacks."""
    for f in (SPS / "topology").iterdir():
        shutil.copy(f, dest / f.name)
    (dest / "posres.itp").write_text("")
    top = dest / "topol.top"
    top.write_text(top.read_text().replace("PS1       36", f"PS1       {n_chains}"))
    return top


@pytest.fixture(scope="module")
def sps(tmp_path_factory):
    return read_topology(reference_copy(tmp_path_factory.mktemp("sps")))


def test_sps_counts_and_units(sps):
    assert sps.n_atoms == 5832
    assert (len(sps.bonds), len(sps.angles), len(sps.propers), len(sps.impropers)) == (6156, 10800, 684, 4320)
    assert len(sps.pairs) == 0 and len(sps.periodic_impropers) == 0
    assert sps.type_names == ("C", "C_AR", "H", "H_AR")
    first = {name: i for i, name in enumerate(sps.atom_names[:162])}
    assert sps.atom_types[first["C7"]] == "C_AR" and sps.charges[first["C7"]] == pytest.approx(-0.115)
    assert sps.elements[first["C2"]] == "C" and sps.masses[first["H1"]] == pytest.approx(1.008)
    np.testing.assert_allclose(sps.bonds.params[0], [0.110, 10000.0])  # H1-C2: nm, kJ/mol/nm^2
    np.testing.assert_allclose(sps.angles.params[0], [109.45, 306.4])  # degrees, kJ/mol/rad^2
    np.testing.assert_allclose(sps.propers.params[0], [0.0, 6.0, 3.0])
    np.testing.assert_allclose(sps.impropers.params[0], [0.0, 167.4])
    c, car = sps.type_names.index("C"), sps.type_names.index("C_AR")
    sigma, eps = (0.3207 + 0.3550) / 2, np.sqrt(0.3519 * 0.2940)  # comb-rule 2
    assert sps.c6[c, car] == pytest.approx(4 * eps * sigma**6)
    assert sps.c12[c, car] == pytest.approx(4 * eps * sigma**12)
    assert sps.molecules[1] == ("PS1", 162) and sps.molecule_index[162] == 1


def test_exclusions_match_grompp(tmp_path):
    """nrexcl = 2 plus the explicit [ exclusions ], exactly as in the run input grompp writes."""
    top = reference_copy(tmp_path, n_chains=1)
    lines = (SPS / "aa.gro").read_text().splitlines()
    (tmp_path / "one.gro").write_text("one chain\n162\n" + "\n".join(lines[2:164]) + "\n 8.0 8.0 8.0\n")
    (tmp_path / "rf.mdp").write_text(RF_MDP)
    gmx = ["gmx", "-quiet"]
    subprocess.run(
        [*gmx, "grompp", "-f", "rf.mdp", "-c", "one.gro", "-p", top.name, "-o", "one.tpr"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    dump = subprocess.run(
        [*gmx, "dump", "-s", "one.tpr"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    grompp = set()
    for i, members in re.findall(r"excls\[(\d+)\]\[num=\d+\]=\{([^}]*)\}", dump):
        grompp |= {(int(i), int(j)) for j in members.replace("\n", " ").split(",") if int(i) < int(j)}
    ours = {tuple(p) for p in read_topology(top).exclusions.tolist()}
    assert len(ours) > 0 and ours == grompp


def write_case(tmp_path: Path, edit) -> Path:
    top = reference_copy(tmp_path, n_chains=1)
    itp = tmp_path / "topol_PS1.itp"
    itp.write_text(edit(itp.read_text()))
    return top


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (lambda t: replace_line(t, "    15   C_AR ", "    15   C_XX "), 24, r"unknown atom type 'C_XX'"),
        (
            lambda t: replace_line(t, "     1       2       1\n", "     1       2       1.5x\n"),
            179,
            r"malformed number '1\.5x' for function type",
        ),
        (
            lambda t: replace_line(t, "     1       2       1\n", "     1       2       7\n"),
            179,
            r"\[ bonds \]: unsupported function type 7 \(supported: 1, 2, 5\)",
        ),
        (
            lambda t: replace_line(t, "146    149    148      1 ", "146    149    148      8 "),
            None,
            r"\[ dihedrals \]: unsupported function type 8",
        ),
        (
            lambda t: replace_line(t, "     1       2       1\n", "     1     999       1\n"),
            179,
            r"atom 999 does not exist in moleculetype 'PS1'",
        ),
    ],
    ids=[
        "unknown-atom-type",
        "malformed-number",
        "unsupported-bond-funct",
        "unsupported-dihedral-funct",
        "atom-out-of-range",
    ],
)
def test_bad_topology_lines(tmp_path, edit, line, message):
    top = write_case(tmp_path, edit)
    with pytest.raises(InputError, match=message) as info:
        read_topology(top)
    assert info.value.path.endswith("topol_PS1.itp")
    if line is not None:
        assert info.value.line == line
    assert "\n" not in str(info.value)


def test_missing_include_names_the_line(tmp_path):
    """The published PS1 chain includes a posres.itp that is not provided."""
    for f in (SPS / "topology").iterdir():
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(InputError, match=r"topol_PS1\.itp:173: included file 'posres\.itp' not found"):
        read_topology(tmp_path / "topol.top")


def test_ifdef_and_macros(tmp_path):
    top = reference_copy(tmp_path, n_chains=1)
    itp = tmp_path / "topol_PS1.itp"
    text = itp.read_text().replace('#include "posres.itp"', '#ifdef POSRES\n#include "absent.itp"\n#endif')
    bond = "     1       2       1"
    text = "#define KB 5000.0\n" + replace_line(text, bond + "\n", bond + "  0.1 KB\n")
    itp.write_text(text)
    topology = read_topology(top)  # POSRES undefined: the absent include is skipped
    np.testing.assert_allclose(topology.bonds.params[0], [0.1, 5000.0])
    with pytest.raises(InputError, match="absent.itp"):
        read_topology(top, defines={"POSRES": ""})


def test_missing_topology_file(tmp_path):
    with pytest.raises(InputError, match="topology file not found"):
        read_topology(tmp_path / "nope.top")


def test_two_atom_dihedral_types_and_bonded_types(tmp_path):
    """grompp's older [ dihedraltypes ] lines name 2 types (a proper's middle atoms, an improper's
    outer ones); parameters are looked up by the bonded type (OPLS-AA's second column)."""
    top = tmp_path / "two.top"
    top.write_text(
        "[ defaults ]\n1 3 yes 0.5 0.5\n[ atomtypes ]\nopls_1 CT 6 12.011 0.0 A 0.35 0.27\n"
        "[ dihedraltypes ]\nCT CT 1 10.0 3.0 3\nCT CT 2 5.0 20.0\n[ moleculetype ]\nM 3\n[ atoms ]\n"
        + "".join(f"{k} opls_1 1 M C{k} 1 0.0\n" for k in range(1, 5))
        + "[ dihedrals ]\n1 2 3 4 1\n1 2 3 4 2\n[ system ]\ns\n[ molecules ]\nM 1\n"
    )
    topology = read_topology(top)
    np.testing.assert_allclose(topology.propers.params, [[10.0, 3.0, 3.0]])
    np.testing.assert_allclose(topology.impropers.params, [[5.0, 20.0]])


def test_missing_parameters_name_the_line(tmp_path):
    top = tmp_path / "missing.top"
    top.write_text(
        "[ defaults ]\n1 2 yes 0.5 0.5\n[ atomtypes ]\nA 12.0 0.0 A 0.3 0.2\n[ moleculetype ]\nM 3\n[ atoms ]\n"
        "1 A 1 M A1 1 0.0\n2 A 1 M A2 1 0.0\n[ bonds ]\n1 2 1\n[ system ]\ns\n[ molecules ]\nM 1\n"
    )
    with pytest.raises(InputError, match=r"missing\.top:11 \[ bonds \]: no parameters for function type 1 between"):
        read_topology(top)
