"""Small-molecule liquids, the DeepBackmap authors' cumene and n-octane at 350 K: what was built on
one polymer (sPS) must hold for many small molecules with single-atom beads, CG files not wrapped
into the box, bead bond counts that tie, and methyls. Their topologies use GROMOS-96 bonds and
angles (funct 2), read since the topology reader resolves every GROMACS form (`forms`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.environment import FORWARD, GIBBS, Batch, gather, near_owners, neighbourhood, plan_system
from gmx_deepbackmap.generation import reach
from gmx_deepbackmap.mapping import put_in_box, read_mapping
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.prior import LocalPrior
from gmx_deepbackmap.stereo import chiral_centres, learn_stereo, system_stereo
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.thermal import KINDS, thermal_moves
from gmx_deepbackmap.topology import read_topology
from gmx_deepbackmap.training import TrainConfig, chain_end_beads, read_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOLECULE = {"cumene": "G065", "octane": "L49C"}
METHYL_HYDROGENS = {
    "cumene": [["H1", "H2", "H3"], ["H5", "H6", "H7"]],
    "octane": [["H24", "H25", "H26"], ["H9", "H10", "H11"]],
}


@pytest.fixture(scope="module", params=sorted(MOLECULE))
def liquid(request):
    """(folder, topology, mapping, plan) of one liquid, with its mapping file from the data."""
    folder = DATA / request.param
    if not (folder / "topol.top").is_file():
        pytest.skip(f"{request.param} data not found in {folder}")
    topology = read_topology(folder / "topol.top")
    mapping = read_mapping(folder / f"{MOLECULE[request.param]}.map", topology)
    return folder, topology, mapping, plan_system(topology, mapping)


def frame_pairs(folder: Path) -> list[tuple[Path, Path]]:
    return [(aa, aa.parent.parent / "cg" / aa.name) for aa in sorted(folder.glob("*/aa/*.gro"))]


def test_mapping_reproduces_the_published_beads_under_the_minimum_image(liquid):
    """Every frame maps onto its published CG frame to .gro rounding, though the published beads
    lie outside the box where the molecule does (they are not wrapped)."""
    folder, _, mapping, _ = liquid
    outside = 0
    for aa, cg in frame_pairs(folder):
        frame, published = read_frames(aa)[0], read_frames(cg)[0]
        box = torch.from_numpy(frame.box)
        mapped = torch.from_numpy(mapping.cg_positions(frame.positions, frame.box))
        deviation = minimum_image(mapped - torch.from_numpy(published.positions), box).norm(dim=-1)
        assert float(deviation.max()) < 0.001, aa
        outside += int(((published.positions < 0) | (published.positions >= np.diag(frame.box))).any(1).sum())
    assert outside > 0


def test_the_bundled_mapping_is_the_datas(liquid):
    folder, topology, mapping, _ = liquid
    bundled = read_mapping(None, topology)
    assert bundled.molecule_types[MOLECULE[folder.name]].path.parent.name == folder.name
    assert np.array_equal(bundled.member_atoms, mapping.member_atoms)
    assert np.array_equal(bundled.member_weights, mapping.member_weights)


def test_no_bead_of_a_small_molecule_is_a_chain_end(liquid):
    """Octane's bead bond counts tie (1, 2, 2, 1) and cumene's methyl beads differ only in which owns
    the CH (2, 1): no count is typical of the type, so no bead is oversampled as an end."""
    _, _, _, plan = liquid
    assert not chain_end_beads(plan).any()


def every_step(plan, frame, beads: np.ndarray) -> Batch:
    """Every step of the plan as one batch item each, the atoms of `frame` near their beads `beads`."""
    half_extent = TrainConfig().half_extent
    steps = torch.arange(len(plan.step_bead))
    context = torch.where(steps % 2 == 0, FORWARD, GIBBS)
    angle = torch.linspace(0, 6, len(steps), dtype=torch.float64)
    positions = torch.from_numpy(near_owners(plan, frame.positions, beads, frame.box))
    hood = neighbourhood(plan, beads, frame.box, reach(half_extent))
    x, box = torch.from_numpy(beads), torch.from_numpy(frame.box)
    return gather(plan, hood, positions, x, box, steps, context, angle, half_extent)


def test_environments_do_not_depend_on_where_beads_are_wrapped(liquid):
    """The published CG frame and the same frame wrapped into the box give every bead the same
    environment: the same atoms and beads at the same local coordinates."""
    folder, _, _, plan = liquid
    aa, cg = frame_pairs(folder)[0]
    frame, published = read_frames(aa)[0], read_frames(cg)[0]
    wrapped = put_in_box(torch.from_numpy(published.positions), torch.from_numpy(frame.box)).numpy()
    assert not np.allclose(wrapped, published.positions)
    one, other = every_step(plan, frame, published.positions), every_step(plan, frame, wrapped)
    assert torch.equal(one.env_atoms, other.env_atoms) and torch.equal(one.channels, other.channels)
    torch.testing.assert_close(one.particles, other.particles, rtol=0, atol=1e-9)
    assert torch.equal(one.step_mask, other.step_mask)
    torch.testing.assert_close(one.target[one.step_mask], other.target[other.step_mask], rtol=0, atol=1e-9)


def test_the_prior_scores_a_topology_that_lacks_a_kind_of_term(liquid):
    """The prior holds the kinds of bonded term the topology has (n-octane: no improper dihedrals,
    GROMOS-96 bonds and angles only), and every step gets finite energies."""
    folder, topology, _, plan = liquid
    aa, cg = frame_pairs(folder)[0]
    batch = every_step(plan, read_frames(aa)[0], read_frames(cg)[0].positions)
    energies = LocalPrior(topology, plan).energies(batch, batch.target)
    assert set(energies) == {name for name, terms in topology.bonded.items() if len(terms)} | {"lj"}
    assert all(bool(e.isfinite().all()) for e in energies.values())


def test_cumenes_isopropyl_ch_is_no_chiral_centre(liquid):
    """Its two methyls are equivalent: no handedness, though the training frames label them alike."""
    folder, topology, _, _ = liquid
    centres, _ = chiral_centres(topology)
    assert len(centres) == 0
    frames = [read_frames(aa)[0] for aa, _ in frame_pairs(folder)[:2]]
    assert learn_stereo(topology, [(torch.from_numpy(f.positions), torch.from_numpy(f.box)) for f in frames]) == {}
    recorded = {"G065": {"atoms": [[11, 6, 13, 17]], "signs": [-1]}}  # a model file made before the fix
    assert all(len(a) == 0 for a in system_stereo(topology, recorded))


def test_methyls_turn_as_rotors(liquid):
    """Each molecule's two methyls turn their three hydrogens together about the C-C bond."""
    folder, topology, _, _ = liquid
    moves = thermal_moves(topology, ForceField(topology), "groups")
    rotors = np.flatnonzero(moves.kinds == KINDS.index("rotor"))
    assert len(rotors) == 2 * len(topology.molecules)
    first = {frozenset(topology.atom_names[moves.atoms[moves.starts[g] : moves.starts[g + 1]]]) for g in rotors[:2]}
    assert first == {frozenset(names) for names in METHYL_HYDROGENS[folder.name]}


@pytest.mark.parametrize("name", sorted(MOLECULE))
def test_the_training_configs_name_the_bundled_topology_and_the_data(name):
    repository = Path(__file__).resolve().parents[1]
    config = read_config(repository / "workflows" / f"train-{name}-350.toml")
    if not (DATA / name).is_dir():
        pytest.skip(f"{name} data not found in {DATA}")
    assert Path(config.topology).resolve() == repository / "topologies" / name / "topol.top"
    assert all(Path(p).is_dir() for p in config.aa + config.cg) and config.temperature == 350.0
    assert Path(config.output).name == f"{name}-350.pt"


def test_molecules_moved_rigidly_are_fitted_back_onto_their_beads(liquid):
    """`sampling.fit`: every molecule of a reference frame turned (up to ~10 degrees) and shifted
    (0.05 nm) comes back onto its CG beads as the reference maps onto them, each molecule's
    shape unchanged, every atom in the image of its owner bead."""
    from gmx_deepbackmap.pbc import make_whole, unwrap_levels
    from gmx_deepbackmap.sampling.fit import fit_molecules
    from gmx_deepbackmap.thermal import turn

    folder, topology, mapping, _ = liquid
    aa_path, cg_path = frame_pairs(folder)[0]
    aa, cg = read_frames(aa_path)[0], read_frames(cg_path)[0]
    box, beads = torch.as_tensor(aa.box, dtype=torch.float64), torch.as_tensor(cg.positions, dtype=torch.float64)
    levels = unwrap_levels(topology)
    whole = make_whole(torch.as_tensor(aa.positions, dtype=torch.float64), box, levels)
    gen = torch.Generator().manual_seed(0)
    molecule = torch.from_numpy(mapping.bead_molecule[mapping.atom_owner])
    n = int(molecule.max()) + 1
    centre = torch.zeros(n, 3, dtype=torch.float64).index_add_(0, molecule, whole)
    centre /= torch.bincount(molecule, minlength=n)[:, None]
    rotation = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.1
    shift = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.05
    moved = centre[molecule] + shift[molecule] + turn(whole - centre[molecule], rotation[molecule])

    def cg_rms(x: torch.Tensor) -> float:
        return minimum_image(mapping.cg_positions(x, box) - beads, box).norm(dim=-1).square().mean().sqrt().item()

    fitted = fit_molecules(moved, box, beads, mapping, levels)
    assert cg_rms(moved) > 0.05 and cg_rms(fitted) < cg_rms(whole) + 1e-4 < 0.002
    owner = torch.from_numpy(mapping.atom_owner)
    assert minimum_image(fitted - beads[owner], box).sub(fitted - beads[owner]).abs().max() < 1e-9
    refitted = make_whole(fitted, box, levels)
    for start, n_atoms in [(s, topology.molecule_types[name].n_atoms) for name, s in topology.molecules[:5]]:
        own, fit = whole[start : start + n_atoms], refitted[start : start + n_atoms]
        torch.testing.assert_close(torch.cdist(fit, fit), torch.cdist(own, own))  # the same shape


def test_the_fit_leaves_the_turns_beads_do_not_fix_alone():
    """One bead: no turn at all; beads on a line: no turn about the line (Kabsch's is arbitrary there)."""
    from gmx_deepbackmap.sampling.fit import fit_rotations, group_means

    line = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0, 0], [0.0, 0.1, 0], [0.0, 0.2, 0], [1.1, 1.0, 1.0]], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1])

    def centred(points: torch.Tensor) -> torch.Tensor:
        return points - group_means(points, group, 2)[group]

    matrices = fit_rotations(centred(line), centred(target), group, 2)
    expected = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)  # a quarter turn about z
    torch.testing.assert_close(matrices[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(matrices[1], torch.eye(3, dtype=torch.float64))


def test_torsion_moves_change_dihedrals_and_no_bond_or_angle(liquid):
    """`torsion` moves turn what hangs off a bond in no ring about that bond: on a reference frame,
    every bond and angle energy stays to 1e-9 kJ/mol, the dihedral energies change."""
    from gmx_deepbackmap.thermal import _ColourEnergy, _PairList, _propose

    folder, topology, _, _ = liquid
    force_field = ForceField(topology)
    moves = thermal_moves(topology, force_field, "groups")
    torsions = np.flatnonzero(moves.kinds == KINDS.index("torsion"))
    assert len(torsions) >= len(topology.molecules)
    frame = read_frames(frame_pairs(folder)[0][0])[0]
    x, box = torch.as_tensor(frame.positions, dtype=torch.float64), torch.as_tensor(frame.box, dtype=torch.float64)
    first = torsions[:1]
    energy = _ColourEnergy(moves, first, x, box, _PairList.build(x.numpy(), frame.box, moves), stiffness=0.0)
    _, new = _propose(energy, x, torch.full((len(KINDS),), 0.5, dtype=torch.float64), torch.Generator().manual_seed(1))
    before, after = force_field.energies(x, box), force_field.energies(x.index_put((energy.members,), new), box)
    for term in ("g96_bond", "g96_angle"):
        assert float(after[term]) == pytest.approx(float(before[term]), abs=1e-9)
    assert abs(float(after["proper"] - before["proper"])) > 1e-3


@pytest.mark.parametrize("name", sorted(MOLECULE))
def test_the_shipped_liquid_models_build_their_bundled_topology(name):
    """`gmx-dbm backmap --model <liquid>-350` without -p builds the bundled liquid, at 350 K."""
    from gmx_deepbackmap.bundled import bundled_path
    from gmx_deepbackmap.model import default_topology, load_model

    assert default_topology(f"{name}-350") == bundled_path(f"{name}/topol.top")
    model = load_model(f"{name}-350")
    assert model.training["temperature"] == 350.0 and list(model.molecules) == [MOLECULE[name]]
