"""The last stage, Metropolis sweeps with the force field (`thermal`), on a real sPS chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.forms import FORMS, form_energies
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.stereo import MIN_VOLUME, chiral_centres, signed_volume
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.thermal import (
    _CODES,
    _MAX_PARAMS,
    BOLTZMANN,
    COUPLING_RANGE,
    KERNEL_FORMS,
    KINDS,
    _ColourEnergy,
    _colours,
    _PairList,
    _propose,
    _term_energy,
    centre_offsets,
    thermal_moves,
    thermalise,
)
from gmx_deepbackmap.topology import read_topology


@pytest.fixture
def chain(one_chain):
    gro, top = one_chain
    topology = read_topology(top)
    frame = read_frames(gro)[0]
    return topology, ForceField(topology), frame.positions.astype(np.float64), frame.box


def groups(moves, kind: str) -> list[list[int]]:
    rows = np.flatnonzero(moves.kinds == KINDS.index(kind))
    return [moves.atoms[moves.starts[g] : moves.starts[g + 1]].tolist() for g in rows]


def bond_lengths(topology, x: np.ndarray, box: np.ndarray) -> torch.Tensor:
    bonds = torch.from_numpy(topology.bonds.indices)
    xt = torch.from_numpy(x)
    return minimum_image(xt[bonds[:, 1]] - xt[bonds[:, 0]], torch.from_numpy(box)).norm(dim=-1)


def test_the_moves_of_an_sps_chain(chain):
    topology, force_field, _, _ = chain
    planar = thermal_moves(topology, force_field, "planar-hydrogens")
    assert set(planar.kinds.tolist()) == {KINDS.index("hydrogen")}
    assert set(topology.atom_types[planar.atoms]) == {"H_AR"} and len(planar.atoms) == 50  # 10 phenyl rings
    every = thermal_moves(topology, force_field, "hydrogens")
    assert sorted(every.atoms.tolist()) == np.flatnonzero(topology.elements == "H").tolist()
    moves = thermal_moves(topology, force_field, "groups")
    types = topology.atom_types
    crankshafts = [sorted(types[g].tolist()) for g in groups(moves, "crankshaft")]
    assert crankshafts.count(["C_AR", "H_AR"]) == 50  # each ring carbon but the ipso one, about its ring neighbours
    assert crankshafts.count(["C", "H", "H"]) == 10  # 9 inner methylenes, and the last methine with its end H
    assert crankshafts.count(sorted(["C", "H"] + ["C_AR"] * 6 + ["H_AR"] * 5)) == 9  # methines with their phenyls
    pivots = [sorted(types[g].tolist()) for g in groups(moves, "pivot")]
    assert pivots.count(sorted(["C_AR"] * 6 + ["H_AR"] * 5)) == 10  # each phenyl about its methine
    assert pivots.count(sorted(["C_AR"] * 5 + ["H_AR"] * 5)) == 10  # each ring about its ipso carbon
    rotors = groups(moves, "rotor")
    assert [topology.atom_names[g].tolist() for g in rotors] == [["H1", "H3", "H161"]]  # the chain's CH3
    assert topology.atom_names[moves.pivots[moves.kinds == KINDS.index("rotor")][0]].tolist() == ["C2", "C5"]
    for g, pivot in enumerate(moves.pivots):  # no group holds an atom of its own axis
        assert not np.isin(pivot, moves.atoms[moves.starts[g] : moves.starts[g + 1]]).any()


def test_colour_energies_add_up_to_the_force_fields_change(chain):
    """A move alone changes the whole chain's energy by what its colour's energy says; turning every
    group of one colour, by the sum of what each turn alone changes, up to what the far-apart groups
    of a colour change between each other."""
    topology, force_field, x, box = chain
    moves = thermal_moves(topology, force_field, "groups")
    pairs = _PairList.build(x, box, moves)
    colours = _colours(moves, pairs.close(x, COUPLING_RANGE), len(x))
    assert sorted(np.concatenate(colours).tolist()) == list(range(len(moves.kinds)))
    xt, box_t = torch.from_numpy(x), torch.from_numpy(box)
    generator = torch.Generator().manual_seed(0)
    steps = torch.full((len(KINDS),), 0.1, dtype=torch.float64)

    def changes(colour: np.ndarray) -> tuple[float, float]:
        energy = _ColourEnergy(moves, colour, xt, box_t, pairs, stiffness=0.0)
        old, new = _propose(energy, xt, steps, generator)
        moved = xt.index_put((energy.members,), new)
        whole = sum(float(v) for v in force_field.energies(moved, box_t).values()) - sum(
            float(v) for v in force_field.energies(xt, box_t).values()
        )
        return float(energy.change(new, old, xt, None).sum()), whole

    for colour in colours[:4]:
        own, whole = changes(colour)
        assert own == pytest.approx(whole, rel=2e-3, abs=2e-3)
    for kind in range(len(KINDS)):  # single-precision pair parameters
        own, whole = changes(np.flatnonzero(moves.kinds == kind)[:1])
        assert own == pytest.approx(whole, rel=1e-6, abs=1e-6)


def test_a_rotor_turns_its_hydrogens_together_about_its_bond(chain):
    """The methyl's hydrogens turn about the C-C axis as one: every angle at the carbon stays, the
    three H-C-C-C dihedrals change by one and the same angle."""
    topology, force_field, x, box = chain
    moves = thermal_moves(topology, force_field, "groups")
    rotor = np.flatnonzero(moves.kinds == KINDS.index("rotor"))
    xt, box_t = torch.from_numpy(x), torch.from_numpy(box)
    pairs = _PairList.build(x, box, moves)
    energy = _ColourEnergy(moves, rotor, xt, box_t, pairs, stiffness=0.0)
    old, new = _propose(energy, xt, torch.full((len(KINDS),), 0.5, dtype=torch.float64), torch.Generator())
    moved = xt.index_put((energy.members,), new)
    carbon, axis = moves.pivots[rotor[0]]
    bonded_to_axis = topology.bonds.indices[(topology.bonds.indices == axis).any(1)].ravel()
    beyond = next(a for a in bonded_to_axis if a not in (carbon, axis) and topology.elements[a] != "H")
    angles = topology.angles.indices[(topology.angles.indices[:, 1] == carbon)]

    def angle(y: torch.Tensor, a: int, b: int, c: int) -> float:
        u, v = y[a] - y[b], y[c] - y[b]
        return float(torch.atan2(torch.linalg.cross(u, v).norm(), (u * v).sum()))

    def dihedral(y: torch.Tensor, a: int, b: int, c: int, d: int) -> float:
        b1, b2, b3 = y[b] - y[a], y[c] - y[b], y[d] - y[c]
        n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
        return float(torch.atan2(b2.norm() * (b1 * n2).sum(), (n1 * n2).sum()))

    assert len(angles) == 6 and all(abs(angle(moved, *t) - angle(xt, *t)) < 1e-9 for t in angles)
    turns = [dihedral(moved, h, carbon, axis, beyond) - dihedral(xt, h, carbon, axis, beyond) for h in energy.members]
    turns = np.angle(np.exp(1j * np.array(turns)))
    assert np.ptp(turns) < 1e-9 and abs(turns[0]) > 1e-3


def test_moves_keep_bond_lengths_and_the_seed_fixes_them(chain):
    topology, force_field, x, box = chain
    moves = thermal_moves(topology, force_field, "groups")

    def draw(seed: int) -> np.ndarray:
        return thermalise(x, box, moves, 568.0, sweeps=3, generator=torch.Generator().manual_seed(seed))

    y = draw(1)
    assert not np.allclose(y[topology.elements != "H"], x[topology.elements != "H"])
    assert torch.allclose(bond_lengths(topology, x, box), bond_lengths(topology, y, box), atol=1e-9)
    assert np.array_equal(y, draw(1)) and not np.array_equal(y, draw(2))
    hydrogens = thermalise(x, box, thermal_moves(topology, force_field, "hydrogens"), 568.0, sweeps=3)
    assert np.array_equal(hydrogens[topology.elements != "H"], x[topology.elements != "H"])


def test_bead_centres_stay_on_the_cg_frame(chain):
    """With the mapping, the centres keep to the CG positions within a few times their spread; the
    same sweeps without it carry them further off."""
    topology, force_field, x, box = chain
    mapping = read_mapping(None, topology)
    cg = mapping.cg_positions(x, box, wrap=False)
    xt, box_t, cg_t = (torch.from_numpy(a) for a in (x, box, cg))

    def offset(moves) -> float:
        y = thermalise(
            x, box, moves, 568.0, sweeps=6, generator=torch.Generator().manual_seed(0), cg=cg, centre_spread=0.005
        )
        return float(centre_offsets(held.centres, torch.from_numpy(y), box_t, cg_t).norm(dim=-1).square().mean().sqrt())

    held = thermal_moves(topology, force_field, "groups", mapping)
    assert float(centre_offsets(held.centres, xt, box_t, cg_t).abs().max()) < 1e-9
    restrained, free = offset(held), offset(thermal_moves(topology, force_field, "groups"))
    assert restrained < 0.012 and free > 1.5 * restrained


def test_flat_ring_hydrogens_warm_up_to_their_temperature(chain):
    """Ring hydrogens put into their rings' planes (out-of-plane energy 0) come back to about
    k_B T / 2 per out-of-plane (improper) term, as a harmonic coordinate at temperature T has."""
    topology, force_field, x, box = chain
    moves = thermal_moves(topology, force_field, "planar-hydrogens")
    hydrogens, anchors = moves.atoms, moves.pivots[:, 0]
    impropers = topology.impropers
    with_h = np.isin(impropers.indices, hydrogens).any(1)

    def out_of_plane(z: np.ndarray) -> float:
        ff = ForceField(topology)
        ff.terms = {**ff.terms, "improper": (ff.terms["improper"][0][with_h], ff.terms["improper"][1][with_h])}
        ff._plan_vectors()
        return float(ff.energies(torch.from_numpy(z), torch.from_numpy(box))["improper"])

    flat = x.copy()
    for h, a in zip(hydrogens, anchors):  # into the plane of its anchor and the anchor's neighbours
        ring = impropers.indices[with_h & (impropers.indices == h).any(1)][0]
        direction = x[a] - x[[i for i in ring if i != h]].mean(0)
        flat[h] = x[a] + np.linalg.norm(x[h] - x[a]) * direction / np.linalg.norm(direction)
    assert out_of_plane(flat) < 1e-6
    for kelvin in (100.0, 568.0):
        drawn = thermalise(flat, box, moves, kelvin, sweeps=40, generator=torch.Generator().manual_seed(0))
        equipartition = with_h.sum() * BOLTZMANN * kelvin / 2
        assert 0.6 < out_of_plane(drawn) / equipartition < 1.3


def test_no_move_inverts_or_flattens_a_recorded_chiral_centre(chain):
    """At 2000 K the 9 inner methine centres of the chain keep their handedness, never closer to
    flat than `stereo.MIN_VOLUME`, when they are given to the moves."""
    topology, force_field, x, box = chain
    centres, neighbours = chiral_centres(topology)
    atoms = np.column_stack([centres, neighbours])
    box_t = torch.from_numpy(box)

    def volumes(z: np.ndarray) -> torch.Tensor:
        zt = torch.from_numpy(z)
        return signed_volume(*(minimum_image(zt[atoms[:, k]] - zt[atoms[:, 0]], box_t) for k in (1, 2, 3)))

    signs = torch.sign(volumes(x)).numpy().astype(np.int64)
    assert len(atoms) == 9 and (volumes(x) * torch.from_numpy(signs) > MIN_VOLUME).all()
    moves = thermal_moves(topology, force_field, "groups", chiral=(atoms, signs))
    hot = thermalise(x, box, moves, 2000.0, sweeps=10, generator=torch.Generator().manual_seed(0))
    assert not np.allclose(hot[atoms[:, 0]], x[atoms[:, 0]])
    assert (volumes(hot) * torch.from_numpy(signs) >= MIN_VOLUME).all()


@pytest.mark.parametrize("name", KERNEL_FORMS)
def test_compiled_forms_are_the_force_fields(name):
    """Every form of the compiled kernel gives `forms.FORMS`' torch energy (1-4 pairs: plain LJ and
    scaled Coulomb) on random geometries and parameters, to 1e-9 relative in float64."""
    rng = np.random.default_rng(7)
    atoms = 2 if name == "pair14" else FORMS[name].atoms
    vectors = rng.normal(scale=0.15, size=(200, atoms - 1, 3))
    params = rng.uniform(0.5, 2.0, size=(200, _MAX_PARAMS))
    params[:, 0] = rng.uniform(-np.pi, np.pi, 200) if name != "pair14" and FORMS[name].angles else params[:, 0]
    if name in ("proper", "periodic_improper"):
        params[:, 2] = rng.integers(1, 7, 200)
    padded = np.concatenate([vectors, np.zeros((200, 4 - atoms, 3))], axis=1)
    compiled = np.array([_term_energy(_CODES[name], *padded[t], params[t]) for t in range(200)])
    v = [torch.from_numpy(vectors[:, k]) for k in range(atoms - 1)]
    p = torch.from_numpy(params)
    if name == "pair14":
        r2 = v[0].square().sum(-1)
        expected = (p[:, 1] / r2**6 - p[:, 0] / r2**3) + p[:, 2] / r2.sqrt()
    else:
        expected = form_energies(name, v, p[:, : len(FORMS[name].columns)])
    np.testing.assert_allclose(compiled, expected.numpy(), rtol=1e-9, atol=1e-9 * np.abs(expected.numpy()).max())
