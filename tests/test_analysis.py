"""`gmx-dbm compare` and its observables: scores of identical sets, bonded values against
MDAnalysis, clashes through periodic images, chirality under inversion, ring planarity, the
per-molecule LJ energy against GROMACS, and the command's report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmx_deepbackmap.analysis import (
    Analysis,
    BondedDistribution,
    BondedEnergyByType,
    Chirality,
    Clashes,
    DistributionSpec,
    FrameContext,
    MoleculeLJ,
    PairDistances,
    RingPlanarity,
    default_observables,
    frame_context,
    histogram_probabilities,
    jensen_shannon,
    read_observables,
    rings,
    select_tuples,
    set_energies,
    topology_observables,
)
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.errors import GromacsError, InputError
from gmx_deepbackmap.gromacs import get_engine
from gmx_deepbackmap.pbc import dimensions_from_box
from gmx_deepbackmap.report import _density
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import bond_paths, read_topology

CHAINS, CENTRES_PER_CHAIN = 36, 9  # every backbone CH carbon but the last one (it carries the end H)


@pytest.fixture(scope="module")
def topology():
    return read_topology(bundled_path("sps/topol.top"))


@pytest.fixture(scope="module")
def analysis(topology):
    return Analysis.from_topology(topology, default_observables(topology))


@pytest.fixture(scope="module")
def frames(sps_data):
    return read_frames(sps_data / "aa.gro", sps_data / "t568" / "aa.xtc", slice(0, 2))


def bonded_context(frame) -> FrameContext:
    """A frame without its neighbour search: enough for the bonded observables."""
    return FrameContext(
        torch.as_tensor(frame.positions), torch.as_tensor(frame.box), np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    )


def observable(analysis, kind):
    return next(o for o in analysis.observables if isinstance(o, kind))


# ----------------------------------------------------------------------------- scores


def test_identical_sets_score_zero(analysis):
    rng = np.random.default_rng(0)
    angles = rng.normal(113, 5, 1000)
    energies = rng.normal(-190, 30, 360)
    counts = rng.poisson(50, (3, 90)).astype(float)
    angle = observable(analysis, BondedDistribution)
    assert angle.score(angles, angles.copy()) == {"jsd": 0.0, "w1": 0.0}
    assert observable(analysis, MoleculeLJ).score(energies, energies.copy()) == {"jsd": 0.0, "w1": 0.0}
    assert observable(analysis, PairDistances).score(counts, counts.copy()) == {"l1": 0.0, "w1": 0.0}
    shifted = angle.score(angles, angles + 3.0)
    assert shifted["jsd"] > 0 and shifted["w1"] == pytest.approx(3.0)


def test_jensen_shannon_bounds_and_overflow_bins():
    edges = np.linspace(0, 1, 11)
    p = histogram_probabilities(np.array([0.05, 0.15]), edges)
    q = histogram_probabilities(np.array([0.55, 2.0]), edges)  # 2.0 lies in the overflow bin
    assert p.sum() == q.sum() == 1 and q[-1] == 0.5
    assert jensen_shannon(p, q) == pytest.approx(math.log(2))  # disjoint supports: the maximum


# ----------------------------------------------------------------------------- selections


def test_plotted_density_reports_the_share_off_the_axis():
    density, outside = _density(np.array([0.5, 1.5, 10.0]), np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(density, [1 / 3, 1 / 3])  # of all values: the curve shows the share inside
    assert outside == pytest.approx(1 / 3)
    assert _density(np.array([5.0]), np.array([0.0, 1.0]))[0].tolist() == [0.0]


def test_bond_paths_and_rings_of_a_small_graph():
    # a six-ring 0..5 with a tail 5-6-7
    bonds = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 0], [5, 6], [6, 7]])
    assert len(bond_paths(bonds, 8, 2)) == 8
    assert len(bond_paths(bonds, 8, 3)) == 6 + 2 + 1  # around the ring, into the tail, along the tail
    assert all(p[0] < p[-1] for p in bond_paths(bonds, 8, 4))
    found = rings(bonds, 8)
    assert found.shape == (1, 6) and set(found[0]) == set(range(6))


def test_sps_selections(topology, analysis):
    tuples = {o.name: o.tuples for o in analysis.observables if isinstance(o, BondedDistribution)}
    assert len(tuples["backbone C-C-C angle"]) == CHAINS * 18  # 20 backbone carbons per chain
    assert len(tuples["backbone C-C-C-C dihedral"]) == CHAINS * 17
    assert len(tuples["ring C-C-C-C improper"]) == CHAINS * 10 * 6
    assert (topology.atom_types[tuples["ring C-C-C-C improper"]] == "C_AR").all()
    by_name = DistributionSpec("first backbone angle", ("C2", "C5", "C1[89]"), (80, 150, 2), select="name")
    assert len(select_tuples(topology, by_name)) == CHAINS
    as_regex = DistributionSpec("x", (r"C\d+", r"C\d+", r"C\d+"), (80, 150, 2), select="name", regex=True)
    assert len(select_tuples(topology, as_regex)) > len(tuples["backbone C-C-C angle"])  # ring carbons too
    with pytest.raises(InputError, match="selects no atoms"):
        select_tuples(topology, DistributionSpec("none", ("C", "Q", "C"), (80, 150, 2)))


def test_without_a_table_every_bonded_type_and_the_intermolecular_pairs_are_observed(topology, frames):
    """A topology with no bundled table (a user's molecule, the liquids) gets one distribution per
    angle, dihedral and improper type, in either direction, and the pair distances of its heavy
    atoms between molecules only."""
    config = topology_observables(topology)
    analysis = Analysis.from_topology(topology, config)
    selected = {o.name: o.tuples for o in analysis.observables if isinstance(o, BondedDistribution)}
    angle_types = {min(tuple(t), tuple(t[::-1])) for t in topology.atom_types[topology.angles.indices].tolist()}
    assert {n for n in selected if n.startswith("angle ")} == {f"angle {'-'.join(t)}" for t in angle_types}
    assert sum(len(t) for n, t in selected.items() if n.startswith("angle ")) == len(topology.angles)
    assert sum(len(t) for n, t in selected.items() if n.startswith("improper ")) == len(topology.impropers)
    pairs = observable(analysis, PairDistances)
    assert pairs.name == "intermolecular C-C pair distances"
    ctx = frame_context(frames[0].positions, frames[0].box, analysis.excluded_keys, analysis.cutoff)
    every = PairDistances(pairs.chosen, pairs.r_max, pairs.width, pairs.elements)
    assert 0 < pairs.single_frame(ctx).sum() < every.single_frame(ctx).sum()  # intramolecular pairs left out


def test_observables_file_errors(tmp_path):
    path = tmp_path / "obs.toml"
    path.write_text("cutoff = 1.0\nbogus = 1\n")
    with pytest.raises(InputError, match="bogus"):
        read_observables(path)
    path.write_text('[[distribution]]\nname = "a"\natoms = ["C", "C", "C"]\nbins = [150, 80, 2]\n')
    with pytest.raises(InputError, match="bins"):
        read_observables(path)


# ----------------------------------------------------------------------------- observables


def test_backbone_angle_against_mdanalysis(analysis, frames):
    from MDAnalysis.lib.distances import calc_angles

    angle = observable(analysis, BondedDistribution)
    ours = angle.conclude([angle.single_frame(bonded_context(f)) for f in frames])
    theirs = []
    for f in frames:
        x = (f.positions * 10).astype(np.float64)
        a, b, c = (x[angle.tuples[:, k]] for k in range(3))
        theirs.append(np.degrees(calc_angles(a, b, c, box=dimensions_from_box(f.box))))
    np.testing.assert_allclose(ours, np.concatenate(theirs), atol=1e-3)  # MDAnalysis works in float32
    assert ours.mean() == pytest.approx(113.2, abs=0.3)


def test_clashes_through_a_sheared_box(frames):
    box = frames[0].box  # triclinic, strongly sheared
    # atoms 0-1: excluded pair at 0.05 nm; atoms 2-3: 0.05 nm apart through the image along b; 4: far away
    x = np.array([[1.0, 1.0, 1.0], [1.05, 1.0, 1.0], [0.3, 0.2, 0.5], [0.35, 0.2, 0.5], [2.0, 1.5, 1.5]])
    x[3] += box[1]
    ctx = frame_context(x, box, excluded_keys=np.array([0 * 5 + 1]), cutoff=1.0)
    assert Clashes(0.1).single_frame(ctx)[0] == 1
    assert ctx.distances.min() == pytest.approx(0.05)


def test_chirality_flips_under_inversion(analysis, frames):
    chirality = observable(analysis, Chirality)
    assert len(chirality.centres) == CHAINS * CENTRES_PER_CHAIN
    reference = chirality.conclude([chirality.single_frame(bonded_context(f)) for f in frames])
    # x -> -x in the same box: an improper operation of the same periodic system; every centre inverts
    inverted = [f.__class__(-f.positions, f.box) for f in frames]
    flipped = chirality.conclude([chirality.single_frame(bonded_context(f)) for f in inverted])
    summary = chirality.summary(reference)
    assert summary["positive_per_frame"] + summary["negative_per_frame"] == CHAINS * CENTRES_PER_CHAIN
    assert chirality.score(reference, reference)["flips_per_frame"] == 0
    assert chirality.score(reference, flipped) == {
        "frames_compared": 2,
        "flipped_fraction": 1.0,
        "flips_per_frame": CHAINS * CENTRES_PER_CHAIN,
    }


def test_reference_rings_are_planar(analysis, frames):
    planarity = observable(analysis, RingPlanarity)
    assert planarity.rings.shape == (CHAINS * 10, 6)
    values = planarity.conclude([planarity.single_frame(bonded_context(f)) for f in frames])
    assert 0 < values.max() < 0.02


def test_molecule_lj_parts_add_up(analysis, frames):
    ctx = frame_context(frames[0].positions, frames[0].box, analysis.excluded_keys, analysis.cutoff)
    parts = {o.part: o.single_frame(ctx) for o in analysis.observables if isinstance(o, MoleculeLJ)}
    assert set(parts) == {"total", "intra", "inter"}
    np.testing.assert_allclose(parts["intra"] + parts["inter"], parts["total"], atol=1e-9)
    assert (parts["inter"] < 0).all()  # packed chains attract one another


def test_molecule_lj_adds_up_to_gromacs(analysis, topology, frames, sps_data):
    try:
        engine = get_engine()
    except GromacsError as exc:
        pytest.skip(str(exc))
    energies = set_energies(sps_data / "aa.gro", sps_data / "t568" / "aa.xtc", topology, slice(0, 2), engine=engine)
    assert len(energies["LJ (SR)"]) == 2 and "Potential" in energies
    per_molecule = observable(analysis, MoleculeLJ).single_frame(
        frame_context(frames[0].positions, frames[0].box, analysis.excluded_keys, analysis.cutoff)
    )
    assert per_molecule.shape == (CHAINS,)
    assert per_molecule.sum() == pytest.approx(energies["LJ (SR)"][0], abs=0.05)
    by_type = observable(analysis, BondedEnergyByType)
    split = by_type.summary(by_type.single_frame(bonded_context(frames[0])))
    assert "Angle C_AR-C_AR-H_AR" in split and "Improper Dih. C_AR-C_AR-C_AR-C_AR" in split
    for term in ("Angle", "Proper Dih.", "Improper Dih."):
        total = sum(v for group, v in split.items() if group.startswith(term + " "))
        assert total == pytest.approx(energies[term][0], rel=1e-4), term


# ----------------------------------------------------------------------------- the command


def test_compare_command_writes_report(tmp_path, sps_data):
    xtc = str(sps_data / "t568" / "aa.xtc")
    out = tmp_path / "report"
    args = [
        "compare",
        "-s",
        str(sps_data / "aa.gro"),
        "-p",
        str(bundled_path("sps/topol.top")),
        "--ref",
        xtc,
        "--label",
        f"same={xtc}",
        "--frames",
        "0:2",
        "-o",
        str(out),
        "--no-rerun",
        "--workers",
        "1",
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "distributions.png", "bonded-types.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["frames"] == report["sets"]["same"]["frames"] == 2
    observables = report["observables"]
    for name, entry in observables.items():
        scores = entry["sets"]["same"]
        assert scores.get("jsd", 0.0) == scores.get("l1", 0.0) == scores.get("w1", 0.0) == 0.0, name
    assert observables["chirality"]["sets"]["same"]["flips_per_frame"] == 0
    assert observables["clashes"]["reference"]["max"] == 0
    markdown = (out / "report.md").read_text()
    assert "| backbone C-C-C angle | same | 0 | - | 0 | deg |" in markdown
    assert observables["bonded energy by type"]["sets"]["same"]["Angle C-C-C %"] == pytest.approx(100)
    assert "## Bonded energy by type" in markdown and "(100 %) |" in markdown

    again = CliRunner().invoke(main, args + ["--label", "same=x.xtc"])
    assert again.exit_code != 0 and "label 'same' given twice" in again.output
