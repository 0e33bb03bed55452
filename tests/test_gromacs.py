"""The GROMACS engine on the real `gmx` (and on gmxapi when it is importable): grompp, a short
minimisation, GROMACS' own error messages, per-frame rerun energies, and the bundled templates."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gmx_deepbackmap.bundled import bundled_path, write_mdp
from gmx_deepbackmap.errors import GromacsError, InputError
from gmx_deepbackmap.gromacs import CliEngine, get_engine, minimise, read_edr, rerun_energies

try:
    import gmxapi  # noqa: F401

    NO_GMXAPI = ""
except ImportError as exc:
    NO_GMXAPI = f"gmxapi is not importable ({exc}); build it with scripts/install-gromacs-gmxapi.sh"
GMXAPI = pytest.param("gmxapi", marks=pytest.mark.skipif(bool(NO_GMXAPI), reason=NO_GMXAPI))
# gmxapi 0.4.2 reads its config with a deprecated importlib.resources call
pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")
TERMS = ("Bond", "Angle", "Proper Dih.", "Improper Dih.", "LJ (SR)", "Coulomb (SR)")


@pytest.fixture(params=["cli", GMXAPI])
def engine(request):
    return get_engine(request.param)


def n_gro_atoms(path) -> int:
    return int(path.read_text().splitlines()[1])


def test_grompp_and_short_minimisation(engine, one_chain, tmp_path):
    gro, top = one_chain
    mdp = write_mdp(bundled_path("sps/em.mdp"), tmp_path / "em.mdp", nsteps=20)
    tpr = engine.grompp(mdp, gro, top, tmp_path / "em.tpr")
    assert tpr.is_file() and (tmp_path / "em.mdout.mdp").is_file()

    out = engine.mdrun(tpr, tmp_path / "run", threads=1)
    energies = read_edr(out.edr)
    assert out.log.is_file() and out.confout is not None
    assert energies["Potential"][-1] < energies["Potential"][0]
    assert n_gro_atoms(out.confout) == n_gro_atoms(gro)

    with pytest.raises(InputError, match="new or empty"):
        engine.mdrun(tpr, tmp_path / "run")

    minimised = minimise(gro, top, mdp, tmp_path / "min.gro", engine=engine)
    assert n_gro_atoms(minimised) == n_gro_atoms(gro)


def test_grompp_atom_count_mismatch_quotes_gromacs(engine, one_chain, tmp_path):
    gro, top = one_chain
    lines = gro.read_text().splitlines()
    short = tmp_path / "short.gro"
    short.write_text("\n".join([lines[0], str(int(lines[1]) - 1), *lines[2:-2], lines[-1]]) + "\n")
    with pytest.raises(GromacsError) as err:
        engine.grompp(bundled_path("sps/em.mdp"), short, top, tmp_path / "em.tpr")
    message = str(err.value)
    assert message.startswith("gmx grompp failed: Program: gmx grompp")
    assert "Source file: src/gromacs/" in message and "(line " in message
    assert re.search(
        r"number of coordinates in coordinate file \(\S*short.gro, 161\)\s+does not match "
        r"topology \(\S*topol.top, 162\)",
        message,
    )
    assert "\n" not in message and "For more information" not in message
    assert not (tmp_path / "em.tpr").exists()


def test_grompp_unknown_atom_type_quotes_gromacs(engine, one_chain, tmp_path):
    gro, top = one_chain
    itp = top.parent / "topol_PS1.itp"
    itp.write_text(itp.read_text().replace("     1   H    ", "     1   HX   ", 1))
    with pytest.raises(GromacsError, match=r"gmx grompp failed: .*Atomtype HX not found"):
        engine.grompp(bundled_path("sps/em.mdp"), gro, top, tmp_path / "em.tpr")


def test_mdrun_fatal_error_quotes_gromacs(engine, one_chain, sps_data, tmp_path):
    """A fatal error inside mdrun (here: a rerun trajectory of the 36-chain system for a one-chain
    run input) becomes a GromacsError; with gmxapi it must not end the Python process."""
    gro, top = one_chain
    tpr = engine.grompp(bundled_path("sps/rerun.mdp"), gro, top, tmp_path / "rerun.tpr")
    with pytest.raises(
        GromacsError,
        match=r"gmx mdrun.* failed: Program: .*Source file: src/gromacs/mdrun/"
        r"rerun.cpp .*Number of atoms in trajectory \(5832\) does not match the run input "
        r"file \(162\)",
    ):
        engine.mdrun(tpr, tmp_path / "run", rerun=sps_data / "aa.gro", threads=1)


def test_rerun_energies_per_frame(engine, sps_data, tmp_path):
    import MDAnalysis as mda

    universe = mda.Universe(str(sps_data / "aa.gro"), str(sps_data / "t568" / "aa.xtc"))
    two = tmp_path / "two.xtc"
    with mda.Writer(str(two), universe.atoms.n_atoms) as writer:
        for _ in universe.trajectory[:2]:
            writer.write(universe.atoms)

    energies = rerun_energies(
        sps_data / "aa.gro", two, bundled_path("sps/topol.top"), engine=engine, workdir=tmp_path / "rerun"
    )
    for term in (*TERMS, "Potential", "Time"):
        assert energies[term].shape == (2,) and np.isfinite(energies[term]).all(), term
    np.testing.assert_allclose(sum(energies[t] for t in TERMS), energies["Potential"], rtol=1e-4)
    # the data's README: mean Potential 17657 kJ/mol at 568 K (spread ~440), bonds nearly at b0
    assert (np.abs(energies["Potential"] - 17657) < 2500).all()
    assert (energies["Bond"] < 50).all()
    assert (tmp_path / "rerun" / "rerun.tpr").is_file()


def test_bundled_sps_templates_pass_grompp(sps_data, tmp_path):
    engine = CliEngine()
    top = bundled_path("sps/topol.top")
    for name in ("em", "rerun"):
        engine.grompp(bundled_path(f"sps/{name}.mdp"), sps_data / "aa.gro", top, tmp_path / f"{name}.tpr")
    md = write_mdp(bundled_path("sps/md-npt.mdp"), tmp_path / "md.mdp", ref_t=313, gen_temp=313, gen_seed=7)
    with pytest.raises(GromacsError, match="Too many warnings .*Parrinello-Rahman"):
        engine.grompp(md, sps_data / "aa.gro", top, tmp_path / "md.tpr")
    engine.grompp(md, sps_data / "aa.gro", top, tmp_path / "md.tpr", maxwarn=1)  # that one warning only


def test_write_mdp_overrides(tmp_path):
    template = tmp_path / "t.mdp"
    template.write_text("; comment\nref-t = 300 ; K\nnsteps=10\ngen_seed = 1\n")
    overrides = {"ref_t": 568, "NSTEPS": 5, "gen-seed": None, "tau-t": [0.1, 0.2], "gen_vel": True}
    lines = write_mdp(template, tmp_path / "o.mdp", **overrides).read_text().splitlines()
    assert lines[0] == "; comment"
    settings = [re.sub(r"\s+", " ", x) for x in lines if "=" in x]
    assert settings == ["ref-t = 568", "nsteps = 5", "tau-t = 0.1 0.2", "gen_vel = yes"]


def test_engine_selection(monkeypatch):
    monkeypatch.setenv("GMXDBM_ENGINE", "cli")
    assert get_engine().name == "cli"
    with pytest.raises(InputError, match="unknown GROMACS engine 'nope'"):
        get_engine("nope")
    monkeypatch.setenv("GMXDBM_GMX", "/nonexistent/gmx")
    with pytest.raises(GromacsError, match="GMXDBM_GMX"):
        get_engine("cli")
