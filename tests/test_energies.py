"""The PyTorch force field against `gmx mdrun -rerun` (sPS frames, and a small system with every
term GROMACS knows of that sPS lacks), hand-computed energies, precision, gradients, periodic
images in a sheared box, local subsets, and `gmx-dbm energy`."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.energies import GMX_TERM_NAMES, TERMS, ForceField, bonded_row_energies
from gmx_deepbackmap.errors import GromacsError
from gmx_deepbackmap.gromacs import get_engine, rerun_energies
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology

SPS_TERMS = ("bond", "angle", "proper", "improper", "lj", "coulomb")

# Two types, charges, gen-pairs with fudge factors, nrexcl 2 (so 1-4 atoms also interact through
# LJ/Coulomb (SR)), funct 1 + 9 propers with asymmetric phases (the dihedral sign matters), a
# harmonic and a periodic improper.
SMALL_TOP = """
[ defaults ]
1 2 yes 0.5 0.8333
[ atomtypes ]
A 12.011 0.0 A 0.30 0.40
B  1.008 0.0 A 0.25 0.20
[ moleculetype ]
M 2
[ atoms ]
1 A 1 MOL A1 1  0.40 12.011
2 A 1 MOL A2 1 -0.20 12.011
3 A 1 MOL A3 1  0.30 12.011
4 B 1 MOL B4 1 -0.50 1.008
5 B 1 MOL B5 1  0.00 1.008
[ bonds ]
1 2 1 0.15 100000
2 3 1 0.16 90000
3 4 1 0.11 120000
2 5 1 0.11 120000
[ pairs ]
1 4 1
[ angles ]
1 2 3 1 110 400
2 3 4 1 115 350
1 2 5 1 109 300
[ dihedrals ]
1 2 3 4 1 30 5 3
1 2 3 4 9 -20 3 1
1 2 3 4 9 60 2 2
1 3 2 5 2 25 100
5 1 3 2 4 170 7 2
[ system ]
small
[ molecules ]
M 4
"""
# GROMACS' limits for triclinic boxes, strongly sheared: rows a, b, c (nm)
SHEARED_BOX = np.array([[3.2, 0.0, 0.0], [1.4, 3.0, 0.0], [-1.2, 1.3, 3.0]])
TEMPLATE = np.array([[0, 0, 0], [0.15, 0, 0], [0.2, 0.15, 0], [0.3, 0.18, 0.08], [0.12, -0.05, 0.1]])
CENTRES = np.array([[0.01, 0.01, 0.01], [1.5, 1.4, 1.2], [2.0, 1.9, 1.7], [0.6, 2.5, 2.2]])


def write_gro(path, x: np.ndarray, box: np.ndarray) -> None:
    names = ["A1", "A2", "A3", "B4", "B5"]
    lines = ["small", str(len(x))]
    for k, p in enumerate(x):
        lines.append(f"{k // 5 + 1:5d}{'MOL':<5}{names[k % 5]:>5}{k + 1:5d}{p[0]:8.3f}{p[1]:8.3f}{p[2]:8.3f}")
    b = box
    lines.append(
        " ".join(f"{v:.5f}" for v in (b[0, 0], b[1, 1], b[2, 2], b[0, 1], b[0, 2], b[1, 0], b[1, 2], b[2, 0], b[2, 1]))
    )
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def small(tmp_path):
    """(gro, top) of four 5-atom molecules in a sheared box, wrapped atom by atom into the box so
    that the first molecule is broken across it."""
    rng = np.random.default_rng(1)
    x = np.concatenate([c + TEMPLATE + rng.normal(0, 0.01, (5, 3)) for c in CENTRES])
    x = ((x @ np.linalg.inv(SHEARED_BOX)) % 1.0) @ SHEARED_BOX
    gro, top = tmp_path / "conf.gro", tmp_path / "topol.top"
    write_gro(gro, x, SHEARED_BOX)
    top.write_text(SMALL_TOP)
    return gro, top


@pytest.fixture(scope="module")
def sps_force_field() -> ForceField:
    return ForceField(read_topology(bundled_path("sps/topol.top")))


def gromacs_engine():
    try:
        return get_engine()
    except GromacsError as exc:
        pytest.skip(str(exc))


def total(energies: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(energies.values())


# ---------------------------------------------------------------------------- against GROMACS


@pytest.mark.parametrize("temperature", ["t568", "t313"])
def test_energy_command_matches_gromacs_rerun(temperature, sps_data, tmp_path, capsys):
    import MDAnalysis as mda

    universe = mda.Universe(str(sps_data / "aa.gro"), str(sps_data / temperature / "aa.xtc"))
    ten = tmp_path / "ten.xtc"
    with mda.Writer(str(ten), universe.atoms.n_atoms) as writer:
        for _ in universe.trajectory[:10]:
            writer.write(universe.atoms)
    top = bundled_path("sps/topol.top")
    gro = sps_data / "aa.gro"
    reference = rerun_energies(gro, ten, top, engine=gromacs_engine(), workdir=tmp_path / "gmx")

    out = tmp_path / "energies.csv"
    args = ["energy", "-s", gro, "-f", ten, "-p", top, "-o", out, "--no-progress"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "Improper Dih." in result.output and "written to" in result.output
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(10))
    assert list(rows[0]) == ["frame", "time", *TERMS, "potential"]

    worst = {}
    for term in SPS_TERMS:
        ours = np.array([float(r[term]) for r in rows])
        gmx = reference[GMX_TERM_NAMES[term]]
        diff = np.abs(ours - gmx)
        worst[GMX_TERM_NAMES[term]] = diff.max()
        assert (diff <= np.maximum(1e-3 * np.abs(gmx), 1.0)).all(), (term, ours, gmx)
    with capsys.disabled():
        print(
            f"\n{temperature} largest |ours - gmx| per frame (kJ/mol): "
            + ", ".join(f"{k} {v:.4f}" for k, v in worst.items())
        )


def test_small_system_every_term_matches_gromacs(small, tmp_path):
    gro, top = small
    reference = rerun_energies(gro, gro, top, engine=gromacs_engine(), workdir=tmp_path / "gmx")
    frame = read_frames(gro)[0]
    energies = ForceField(read_topology(top)).energies(frame.positions, frame.box)
    for term in TERMS:  # GROMACS leaves out the terms a system has none of
        gmx = reference.get(GMX_TERM_NAMES[term], [0.0])[0]
        assert float(energies[term]) == pytest.approx(gmx, rel=1e-5, abs=1e-3), term


# ---------------------------------------------------------------------------- by hand

HAND_TOP = """
[ defaults ]
1 2 no 1.0 1.0
[ atomtypes ]
A 12.011 0.0 A 0.30 0.40
[ moleculetype ]
M 3
[ atoms ]
1 A 1 MOL A1 1 0.0 12.011
2 A 1 MOL A2 1 0.0 12.011
3 A 1 MOL A3 1 0.0 12.011
4 A 1 MOL A4 1 0.0 12.011
[ bonds ]
1 2 1 0.11 1000
2 3 1 0.15 1000
3 4 1 0.12 1000
[ angles ]
1 2 3 1 100 400
[ dihedrals ]
1 2 3 4 1 30 5 1
1 2 3 4 2 -170 10
1 2 3 4 4 180 2 2
[ system ]
hand
[ molecules ]
M 1
"""


def test_bonded_energies_by_hand(tmp_path):
    """Bond 1-2 0.1 nm (b0 0.11), angle 1-2-3 90 degrees (theta0 100), dihedral 1-2-3-4 +90 degrees
    (IUPAC: atom 1 along +y, atom 4 along +z, looking down the 2->3 bond along +x)."""
    (tmp_path / "hand.top").write_text(HAND_TOP)
    force_field = ForceField(read_topology(tmp_path / "hand.top"))
    x2 = np.array([1.0, 1.0, 1.0])
    x = np.array([x2 + [0, 0.1, 0], x2, x2 + [0.15, 0, 0], x2 + [0.15, 0, 0.12]])
    energies = force_field.energies(x, 5.0 * np.eye(3))
    assert float(energies["bond"]) == pytest.approx(0.5 * 1000 * 0.01**2)
    assert float(energies["angle"]) == pytest.approx(0.5 * 400 * math.radians(10) ** 2)
    assert float(energies["proper"]) == pytest.approx(5 * (1 + math.cos(math.radians(90 - 30))))
    # xi - xi0 = 260 degrees wraps to -100
    assert float(energies["improper"]) == pytest.approx(0.5 * 10 * math.radians(100) ** 2)
    assert float(energies["periodic_improper"]) == pytest.approx(2 * (1 + math.cos(math.radians(180 - 180))))
    for term in ("lj", "coulomb", "lj14", "coulomb14"):
        assert float(energies[term]) == 0.0


# ---------------------------------------------------------------------------- precision, gradients, images


def test_float32_agrees_with_float64(small):
    gro, top = small
    frame = read_frames(gro)[0]
    force_field = ForceField(read_topology(top))
    e64 = force_field.energies(frame.positions, frame.box)
    e32 = force_field.to(dtype=torch.float32).energies(frame.positions, frame.box)
    for term in TERMS:
        assert e32[term].dtype == torch.float32
        assert float(e32[term]) == pytest.approx(float(e64[term]), rel=1e-4, abs=1e-3), term


def test_gradients_match_finite_differences(small):
    gro, top = small
    frame = read_frames(gro)[0]
    force_field = ForceField(read_topology(top))
    x = torch.tensor(frame.positions, requires_grad=True)
    box = torch.tensor(frame.box)
    assert torch.autograd.gradcheck(lambda y: total(force_field.energies(y, box)), (x,), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name, params",
    [("bond", [0.15, 1e5]), ("angle", [110.0, 400.0]), ("proper", [0.0, 5.0, 3.0]), ("improper", [0.0, 100.0])],
)
def test_degenerate_geometry_has_finite_gradients(name, params):
    """Coinciding or collinear atoms (an untrained generator places them so) must not turn the
    energy prior's gradient, and with it every weight, into NaN."""
    k = {"bond": 2, "angle": 3}.get(name, 4)
    collinear = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.2], [0.0, 0.0, 0.3]])
    for x in (torch.zeros(1, 4, 3), collinear[None]):
        x = x.clone().requires_grad_(True)
        energy = bonded_row_energies(name, x, torch.arange(k)[None, None], torch.tensor([[params]]))
        energy.sum().backward()
        assert torch.isfinite(energy).all() and torch.isfinite(x.grad).all()


def test_invariant_under_box_vector_translations(small):
    """Whole molecules or single atoms moved by lattice vectors of a sheared box (molecules broken
    across it) keep every energy term."""
    gro, top = small
    frame = read_frames(gro)[0]
    force_field = ForceField(read_topology(top))
    box = frame.box
    moved = frame.positions.copy()
    moved[5:10] += box[1] - box[2]  # molecule 2
    moved[0] += box[0] + box[1] + box[2]  # single atoms of molecule 1
    moved[3] -= 2 * box[0]
    batch = force_field.energies(np.stack([frame.positions, moved]), np.stack([box, box]))
    for term in TERMS:
        assert float(batch[term][1]) == pytest.approx(float(batch[term][0]), rel=1e-9, abs=1e-9), term


# ---------------------------------------------------------------------------- local subsets (sampler)


def test_subset_changes_like_the_whole_system(sps_force_field, sps_data):
    """Moving one phenyl's atoms changes the subset's energies and forces exactly as the whole
    frame's, with periodic images (box) or with coordinates made whole around the bead (no box)."""
    frame = read_frames(sps_data / "aa.gro")[0]
    x, box = torch.tensor(frame.positions), torch.tensor(frame.box)
    active = np.arange(16 * 2 + 5, 16 * 2 + 16)  # ipso C to the last ring H of monomer 3, chain 1
    centre = x[active].mean(0)
    relative = minimum_image(x - centre, box)
    near = np.flatnonzero((relative.norm(dim=-1) < 1.3).numpy())
    atoms = np.concatenate([active, np.setdiff1d(near, active)])
    subset = sps_force_field.subset(atoms, active)

    moved = x.clone()
    moved[active] += 0.03 * torch.randn(len(active), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        before = sps_force_field.energies(x, box)
    after = moved.clone().requires_grad_(True)
    e_whole = sps_force_field.energies(after, box)
    total(e_whole).backward()

    both = torch.stack([x, moved])[:, atoms]
    local = both.clone().requires_grad_(True)
    e_local = subset.energies(local, box)
    total(e_local).sum().backward()
    e_unwrapped = subset.energies(centre + minimum_image(both - centre, box))
    for term in TERMS:
        change = (e_whole[term] - before[term]).item()
        assert (e_local[term][1] - e_local[term][0]).item() == pytest.approx(change, abs=1e-6), term
        assert torch.allclose(e_unwrapped[term], e_local[term], atol=1e-8), term
    assert torch.allclose(local.grad[1, : len(active)], after.grad[active], atol=1e-6)


def test_subset_float32_and_errors(sps_force_field, sps_data):
    frame = read_frames(sps_data / "aa.gro")[0]
    atoms = np.arange(100, 400)
    subset = sps_force_field.subset(atoms, atoms[:10])
    x = torch.tensor(frame.positions[atoms])[None].expand(3, -1, -1)
    e64 = subset.energies(x, frame.box)
    e32 = subset.to(dtype=torch.float32).energies(x, frame.box)
    for term in TERMS:
        assert e32[term].shape == (3,) and e32[term].dtype == torch.float32
        assert torch.allclose(e32[term].double(), e64[term], rtol=1e-4, atol=1e-3), term
    with pytest.raises(ValueError, match="active atoms"):
        sps_force_field.subset(atoms, [0])
    with pytest.raises(ValueError, match="subset of a subset"):
        subset.subset(atoms)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu(small):
    gro, top = small
    frame = read_frames(gro)[0]
    force_field = ForceField(read_topology(top))
    cpu = force_field.energies(frame.positions, frame.box)
    cuda = force_field.to("cuda").energies(frame.positions, frame.box)
    subset = force_field.subset(np.arange(20), np.arange(5)).to("cuda", torch.float32)
    local = subset.energies(torch.tensor(frame.positions)[None].expand(4, -1, -1), frame.box)
    for term in TERMS:
        assert cuda[term].device.type == "cuda"
        assert float(cuda[term]) == pytest.approx(float(cpu[term]), rel=1e-9, abs=1e-9), term
        assert local[term].shape == (4,)


# ---------------------------------------------------------------------------- command line


def test_energy_command_rejects_atom_count_mismatch(small, sps_data, tmp_path):
    _, top = small
    result = CliRunner().invoke(
        main, ["energy", "-s", str(sps_data / "aa.gro"), "-p", str(top), "-o", str(tmp_path / "e.csv")]
    )
    assert result.exit_code == 1
    assert "5832 atoms, but the topology" in result.output and "describes 20" in result.output
    assert not (tmp_path / "e.csv").exists()
