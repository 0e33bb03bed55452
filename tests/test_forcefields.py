"""`gmx-dbm energy` against double-precision `gmx_d mdrun -rerun`, term by term, on topologies as
GROMACS force fields write them: the ATB/GROMOS liquids as published, small solvated peptides
made by `gmx pdb2gmx` in GROMACS' own OPLS-AA, CHARMM27 (-nocmap), AMBER99SB-ILDN and GROMOS 54A7,
and one molecule with every bonded form; plus the non-bonded settings of `.mdp` files and the
errors of what the force field cannot evaluate. Everything is built in tmp dirs by real `gmx`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from forcefield_systems import PEPTIDES, every_form, gmx, solvated_peptide

from gmx_deepbackmap.bundled import write_mdp
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.energies import GMX_TERM_NAMES, TERMS, frame_energies
from gmx_deepbackmap.errors import InputError
from gmx_deepbackmap.gromacs import CliEngine, read_edr
from gmx_deepbackmap.mdp import (
    NonbondedSettings,
    model_settings,
    nonbonded_settings,
    read_nonbonded,
    topology_options,
)
from gmx_deepbackmap.topology import read_topology

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RF_MDP = DATA / "cumene" / "rerun.mdp"  # reaction field, epsilon_rf 2.5, 1.0 nm, potential-shift, no DispCorr
SYSTEMS = ("every-form", "cumene", "octane", *PEPTIDES)


def tolerance(reference: float) -> float:
    """The agreement bar: max(0.01 kJ/mol, 1e-5 relative)."""
    return max(0.01, 1e-5 * abs(reference))


@pytest.fixture(scope="module")
def gmx_d():
    if shutil.which("gmx_d") is None or shutil.which("gmx") is None:
        pytest.skip("gmx and gmx_d (double precision GROMACS) are needed")
    return CliEngine("gmx_d")


def system(name: str, folder: Path) -> tuple[Path, Path]:
    """(structure, topology) of a test system."""
    if name == "every-form":
        return every_form(folder)
    if name in ("cumene", "octane"):
        if not (DATA / name / "topol.top").is_file():
            pytest.skip(f"{DATA / name} not found")
        return DATA / name / "heldout" / "aa" / "300.gro", DATA / name / "topol.top"
    return solvated_peptide(name, folder)


def compare(structure: Path, topology: Path, mdp: Path, engine, workdir: Path) -> dict[str, tuple[float, float]]:
    """(ours, gmx_d) per GROMACS term name, and the potential; terms neither has are left out.

    grompp may warn once, for GROMOS' twin-range parametrisation (no bearing on a rerun).
    """
    workdir.mkdir()
    tpr = engine.grompp(mdp, structure, topology, workdir / "rerun.tpr", maxwarn=1)
    reference = read_edr(engine.mdrun(tpr, workdir / "mdrun", rerun=structure).edr)
    read = read_topology(topology, *topology_options(mdp))  # with the .mdp's define and include, as grompp
    ours = frame_energies(structure, read, settings=nonbonded_settings(mdp))[0]
    table = {
        GMX_TERM_NAMES[t]: (ours[t], float(reference.get(GMX_TERM_NAMES[t], [0.0])[0]))
        for t in TERMS
        if ours[t] != 0 or GMX_TERM_NAMES[t] in reference
    }
    table["Potential"] = (sum(ours[t] for t in TERMS), float(reference["Potential"][0]))
    return table


@pytest.mark.parametrize("name", SYSTEMS)
def test_energy_agrees_with_gmx_d_rerun(name, gmx_d, tmp_path):
    structure, topology = system(name, tmp_path)
    table = compare(structure, topology, RF_MDP, gmx_d, tmp_path / "gmx")
    for term, (ours, theirs) in table.items():
        if term != "Potential":  # a sum: the bar is per term
            assert abs(ours - theirs) <= tolerance(theirs), f"{name} {term}: ours {ours:.5f}, gmx_d {theirs:.5f}"
    assert len(table) >= 5


def test_plain_cutoff_coulomb_is_reaction_field_with_epsilon_rf_1(gmx_d, tmp_path):
    structure, topology = solvated_peptide("gromos54a7", tmp_path)
    mdp = write_mdp(RF_MDP, tmp_path / "cutoff.mdp", coulombtype="Cut-off", **{"epsilon-rf": None})
    assert nonbonded_settings(mdp).epsilon_rf == 1.0
    for term, (ours, theirs) in compare(structure, topology, mdp, gmx_d, tmp_path / "gmx").items():
        if term != "Potential":
            assert abs(ours - theirs) <= tolerance(theirs), f"{term}: ours {ours:.5f}, gmx_d {theirs:.5f}"


def test_the_mdp_defines_reach_the_topology(gmx_d, tmp_path):
    """`define = -DFLEXIBLE` turns GROMOS' SPC water from settles into bonds and an angle, as in grompp."""
    structure, topology = solvated_peptide("gromos54a7", tmp_path)
    mdp = write_mdp(RF_MDP, tmp_path / "flexible.mdp", define="-DFLEXIBLE")
    assert topology_options(mdp) == ({"FLEXIBLE": ""}, [])
    table = compare(structure, topology, mdp, gmx_d, tmp_path / "gmx")
    assert len(read_topology(topology, *topology_options(mdp)).constraints) == 0
    for term, (ours, theirs) in table.items():
        if term != "Potential":
            assert abs(ours - theirs) <= tolerance(theirs), f"{term}: ours {ours:.5f}, gmx_d {theirs:.5f}"


def test_plain_lennard_jones_without_modifier(gmx_d, tmp_path):
    structure, topology = every_form(tmp_path)
    mdp = write_mdp(RF_MDP, tmp_path / "none.mdp", **{"vdw-modifier": "None", "epsilon-r": 2.0})
    assert nonbonded_settings(mdp) == NonbondedSettings(1.0, 2.0, 2.5, "none")
    for term, (ours, theirs) in compare(structure, topology, mdp, gmx_d, tmp_path / "gmx").items():
        assert abs(ours - theirs) <= tolerance(theirs), f"{term}: ours {ours:.5f}, gmx_d {theirs:.5f}"


@pytest.mark.parametrize("modifier", ["Potential-shift", "None"])
def test_dispersion_correction_agrees_with_gmx_d(modifier, gmx_d, tmp_path):
    structure, topology = solvated_peptide("amber99sb-ildn", tmp_path)
    mdp = write_mdp(RF_MDP, tmp_path / "dispcorr.mdp", DispCorr="EnerPres", **{"vdw-modifier": modifier})
    table = compare(structure, topology, mdp, gmx_d, tmp_path / "gmx")
    ours, theirs = table["Disper. corr."]
    assert theirs < 0 and abs(ours - theirs) <= tolerance(theirs)


def test_pme_is_approximated_by_a_conducting_reaction_field(tmp_path, capsys):
    mdp = write_mdp(RF_MDP, tmp_path / "pme.mdp", coulombtype="PME", rcoulomb=1.2, rvdw=1.2)
    settings = nonbonded_settings(mdp)
    assert (settings.cutoff, settings.epsilon_rf) == (1.2, 0.0)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "approximated by reaction field with epsilon-rf = 0" in printed[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rvdw": 1.2}, "unequal cut-offs"),
        ({"DispCorr": "AllEner"}, "DispCorr = allener"),
        ({"vdw-modifier": "Force-switch"}, "vdw-modifier = force-switch"),
        ({"vdwtype": "PME"}, "vdwtype = pme"),
        ({"coulombtype": "Reaction-field-zero"}, "coulombtype = reaction-field-zero"),
        ({"rcoulomb": "one"}, "expected a number"),
    ],
)
def test_unsupported_mdp_settings_are_refused(tmp_path, overrides, message):
    mdp = write_mdp(RF_MDP, tmp_path / "bad.mdp", **overrides)
    with pytest.raises(InputError, match=message) as info:
        read_nonbonded(mdp)
    assert info.value.path == str(mdp) and "\n" not in str(info.value)


def test_recorded_settings_come_back():
    settings = NonbondedSettings(1.2, 1.0, 0.0, "none")
    assert model_settings({"nonbonded": settings.as_dict()}) == settings
    assert model_settings({}) == NonbondedSettings()  # models trained before settings were recorded


def test_cmap_is_refused_naming_file_section_and_line(tmp_path):
    if shutil.which("gmx") is None:
        pytest.skip("gmx is needed")
    _, topology = solvated_peptide("charmm27", tmp_path, cmap=True)
    line = topology.read_text().splitlines().index("[ cmap ]") + 1
    with pytest.raises(InputError, match="CMAP correction maps are not supported") as info:
        read_topology(topology)
    assert (info.value.path, info.value.line, info.value.section) == (str(topology), line, "cmap")


def test_virtual_sites_are_refused_naming_file_section_and_line(tmp_path):
    if shutil.which("gmx") is None:
        pytest.skip("gmx is needed")
    (tmp_path / "topol.top").write_text(
        '#include "oplsaa.ff/forcefield.itp"\n#include "oplsaa.ff/tip4p.itp"\n[ system ]\nw\n[ molecules ]\nSOL 1\n'
    )
    with pytest.raises(InputError, match="virtual sites are not supported") as info:
        read_topology(tmp_path / "topol.top")
    assert info.value.path.endswith("oplsaa.ff/tip4p.itp") and info.value.section == "virtual_sites3"
    assert info.value.line is not None


def test_settles_are_constraints_and_exclusions(tmp_path):
    if shutil.which("gmx") is None:
        pytest.skip("gmx is needed")
    gmx(["solvate", "-cs", "spc216.gro", "-box", "1.2", "-o", "water.gro"], tmp_path)
    (tmp_path / "topol.top").write_text(
        '#include "gromos54a7.ff/forcefield.itp"\n#include "gromos54a7.ff/spc.itp"\n[ system ]\nw\n'
        "[ molecules ]\nSOL 1\n"
    )
    water = read_topology(tmp_path / "topol.top")
    assert water.constraints.indices.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert water.constraints.params[:, 0].tolist() == pytest.approx([0.1, 0.1, 0.16330])
    assert water.exclusions.tolist() == [[0, 1], [0, 2], [1, 2]]


def test_energy_command_takes_the_mdp(tmp_path):
    structure, topology = every_form(tmp_path)
    common = ["energy", "-s", str(structure), "-p", str(topology), "-o", str(tmp_path / "e.csv"), "--no-progress"]
    result = CliRunner().invoke(main, [*common, "--mdp", str(RF_MDP)])
    assert result.exit_code == 0 and "Fourier Dih." in result.output and "Disper. corr." not in result.output
    result = CliRunner().invoke(main, [*common, "--mdp", str(RF_MDP), "--cutoff", "1.1", "--overwrite"])
    assert result.exit_code == 1 and "leave out --cutoff and --epsilon-rf" in result.output
