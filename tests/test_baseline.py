"""The geometric baseline (`gmx-dbm baseline`) on one sPS chain: modifier geometry, placement with the
bundled modifiers, the two-stage GROMACS minimisation, seeds and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from gmx_deepbackmap.analysis import Analysis, ObservableConfig
from gmx_deepbackmap.baseline import baseline, modifier_position, write_bonded_only_topology
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.mapping import map_to_cg
from gmx_deepbackmap.structure import load_universe, read_frames
from gmx_deepbackmap.topology import read_topology

# gmxapi 0.4.2 reads its config with a deprecated importlib.resources call
pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")
TETRAHEDRAL = math.degrees(math.acos(-1 / 3))


@pytest.fixture
def chain(one_chain, tmp_path):
    """(CG structure, topology, AA reference) of one PS1 chain: the CG is mapped from the reference."""
    aa, top = one_chain
    cg = tmp_path / "chain-cg.gro"
    map_to_cg(aa, top, None, cg)
    return cg, top, aa


def checks(top, path) -> dict[str, np.ndarray]:
    """Clashes, ring planarity and chirality (and the rest of `compare`'s checks) of the frames in `path`."""
    return Analysis.from_topology(read_topology(top), ObservableConfig()).run(read_frames(path))


def angle(u, v) -> float:
    return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))


def dihedral(a, b, c, d) -> float:
    axis = (c - b) / np.linalg.norm(c - b)
    p, q = a - b - np.dot(a - b, axis) * axis, d - c - np.dot(d - c, axis) * axis
    return math.degrees(math.atan2(np.dot(np.cross(axis, p), q), np.dot(p, q)))


def test_modifier_geometry():
    b, c, d = np.zeros(3), np.array([0.15, 0, 0]), np.array([0.2, 0.1, 0.05])
    for kind, expected in (("cis", 0.0), ("trans", 180.0)):
        a = modifier_position(kind, np.array([[b, c, d]]), 0.11, 109.5)[0]
        assert np.linalg.norm(a - b) == pytest.approx(0.11)
        assert angle(a - b, c - b) == pytest.approx(109.5)
        assert abs(dihedral(a, b, c, d)) == pytest.approx(expected, abs=1e-6)

    ring = np.array([[0, 0, 0], [0.139, 0, 0], [-0.0695, 0.1204, 0]])  # centre, two neighbours at 120 degrees
    a = modifier_position("out", ring[None], 0.108)[0]
    assert a[2] == pytest.approx(0) and angle(a, ring[1]) == pytest.approx(angle(a, ring[2]))

    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)  # ideal directions
    a = modifier_position("chiral", np.array([[b, tetra[0], tetra[1]]]), 0.1)[0]
    assert np.linalg.det(np.stack([tetra[0], tetra[1], a])) > 0
    assert angle(a, tetra[0]) == pytest.approx(TETRAHEDRAL) and angle(a, tetra[1]) == pytest.approx(TETRAHEDRAL)
    mirror = modifier_position("chiral", np.array([[b, tetra[1], tetra[0]]]), 0.1)[0]
    assert {tuple(np.round(p / 0.1, 6)) for p in (a, mirror)} == {tuple(np.round(t, 6)) for t in tetra[2:]}
    fourth = modifier_position("chiral", np.array([[b, *tetra[:3]]]), 0.1)[0]
    np.testing.assert_allclose(fourth, 0.1 * tetra[3], atol=1e-12)


def test_bonded_only_topology(one_chain, tmp_path):
    _, top = one_chain
    bonded = read_topology(write_bonded_only_topology(top, tmp_path / "bonded.top"))
    full = read_topology(top)
    assert not bonded.charges.any() and not bonded.c6.any() and not bonded.c12.any()
    assert full.charges.any() and full.c12.any()
    np.testing.assert_array_equal(bonded.bonds.indices, full.bonds.indices)
    np.testing.assert_array_equal(bonded.impropers.params, full.impropers.params)


def test_baseline_with_minimisation(chain, tmp_path):
    cg, top, aa = chain
    out = tmp_path / "aa.gro"
    timings = []
    assert baseline(cg, top, out, progress=False, timings=timings) == 1
    assert len(timings) == 1 and timings[0].em_bonded > 0 and timings[0].em_full > 0

    topology, result, source = read_topology(top), load_universe(out), load_universe(cg)
    assert list(result.atoms.names) == list(topology.atom_names)
    np.testing.assert_allclose(result.dimensions, source.dimensions, atol=1e-3)
    x = result.atoms.positions / 10
    bonds = np.linalg.norm(x[topology.bonds.indices[:, 0]] - x[topology.bonds.indices[:, 1]], axis=1)
    assert bonds.max() < 0.2  # whole molecule, no stretched bonds

    values, reference = checks(top, out), checks(top, aa)
    assert values["clashes"].sum() == 0
    assert values["ring planarity"].max() < 0.02
    np.testing.assert_array_equal(values["chirality"], reference["chirality"])


def run_cli(*args):
    return CliRunner().invoke(main, ["baseline", *map(str, args)])


def test_no_em_seeds_and_checks(chain, tmp_path, sps_data):
    cg, top, aa = chain
    bare_map = tmp_path / "bare.map"  # the sPS mapping without modifiers: the displacement acts on every atom
    text = bundled_path("sps/PS1.map").read_text()
    bare_map.write_text(text[: text.index("[ modifiers ]")])
    outputs = {}
    for name, seed, mapping in (
        ("a", 3, []),
        ("b", 3, []),
        ("c", 4, []),
        ("bare3", 3, ["-m", bare_map]),
        ("bare4", 4, ["-m", bare_map]),
    ):
        outputs[name] = tmp_path / f"{name}.gro"
        result = run_cli("-s", cg, "-p", top, *mapping, "-o", outputs[name], "--no-em", "--seed", seed, "--no-progress")
        assert result.exit_code == 0, result.output
    assert outputs["a"].read_text() == outputs["b"].read_text()
    assert outputs["a"].read_text() == outputs["c"].read_text()  # the sPS modifiers name every atom
    assert outputs["bare3"].read_text() != outputs["bare4"].read_text()

    values, reference = checks(top, outputs["a"]), checks(top, aa)
    assert values["ring planarity"].max() < 0.02
    np.testing.assert_array_equal(values["chirality"], reference["chirality"])

    result = run_cli("-s", sps_data / "cg.gro", "-p", top, "-o", tmp_path / "x.gro", "--no-em")
    assert result.exit_code == 1
    assert "720 atoms, but the CG mapping" in result.output and "describes 20" in result.output
