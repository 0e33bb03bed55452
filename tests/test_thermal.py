"""Hydrogens drawn from the force field with the heavy atoms held (`thermal`), on a real sPS chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.pbc import minimum_image, neighbour_pairs
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.thermal import (
    BOLTZMANN,
    NEIGHBOUR_SKIN,
    _GroupEnergy,
    _groups,
    hydrogen_moves,
    thermalise_hydrogens,
)
from gmx_deepbackmap.topology import read_topology


@pytest.fixture
def chain(one_chain):
    gro, top = one_chain
    topology = read_topology(top)
    frame = read_frames(gro)[0]
    return topology, ForceField(topology), frame.positions.astype(np.float64), frame.box


def test_planar_hydrogens_are_those_in_an_improper(chain):
    topology, force_field, _, _ = chain
    every, planar = hydrogen_moves(topology, force_field), hydrogen_moves(topology, force_field, planar_only=True)
    assert every.hydrogens.tolist() == np.flatnonzero(topology.elements == "H").tolist()
    assert set(topology.atom_types[planar.hydrogens]) == {"H_AR"}
    assert len(planar.hydrogens) == 50  # 10 phenyl rings
    bonded = {tuple(sorted(b)) for b in topology.bonds.indices.tolist()}
    assert all(tuple(sorted((h, a))) in bonded for h, a in zip(every.hydrogens, every.anchors))


def test_group_energies_add_up_to_the_force_fields_change(chain):
    """Moving every hydrogen of one group changes the whole chain's energy by the sum of what each
    move alone changes (members share no term and are far apart)."""
    topology, force_field, x, box = chain
    moves = hydrogen_moves(topology, force_field)
    groups = _groups(moves, x, box)
    members = np.concatenate(groups)
    assert sorted(members.tolist()) == list(range(len(moves.hydrogens)))
    xt, box_t = torch.from_numpy(x), torch.from_numpy(box)
    pairs, shifts = neighbour_pairs(x, box, force_field.cutoff + NEIGHBOUR_SKIN)
    for group in groups[:3]:
        energy = _GroupEnergy(moves, xt, box_t, pairs, shifts, group)
        moved = xt.clone()
        atoms = torch.from_numpy(moves.hydrogens[group])
        moved[atoms] += 0.01 * torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)
        own = float((energy(moved[atoms], xt) - energy(xt[atoms], xt)).sum())
        whole = sum(float(v) for v in force_field.energies(moved, box_t).values()) \
            - sum(float(v) for v in force_field.energies(xt, box_t).values())
        assert own == pytest.approx(whole, rel=1e-3, abs=1e-3)


def test_only_hydrogens_move_on_their_bonds_and_the_seed_fixes_them(chain):
    topology, force_field, x, box = chain
    moves = hydrogen_moves(topology, force_field)

    def draw(seed: int) -> np.ndarray:
        return thermalise_hydrogens(x, box, moves, 568.0, sweeps=5, generator=torch.Generator().manual_seed(seed))

    y = draw(1)
    heavy = topology.elements != "H"
    assert np.array_equal(y[heavy], x[heavy]) and not np.allclose(y, x)
    bond = torch.from_numpy(moves.hydrogens), torch.from_numpy(moves.anchors)
    lengths = [minimum_image(torch.from_numpy(z)[bond[0]] - torch.from_numpy(z)[bond[1]], torch.from_numpy(box))
               .norm(dim=-1) for z in (x, y)]
    assert torch.allclose(lengths[0], lengths[1], atol=1e-12)
    assert np.array_equal(y, draw(1)) and not np.array_equal(y, draw(2))


def test_flat_ring_hydrogens_warm_up_to_their_temperature(chain):
    """Ring hydrogens put into their rings' planes (out-of-plane energy 0) come back to about
    k_B T / 2 per out-of-plane (improper) term, as a harmonic coordinate at temperature T has."""
    topology, force_field, x, box = chain
    moves = hydrogen_moves(topology, force_field, planar_only=True)
    impropers = topology.impropers
    with_h = np.isin(impropers.indices, moves.hydrogens).any(1)

    def out_of_plane(z: np.ndarray) -> float:
        ff = ForceField(topology)
        ff.terms = {**ff.terms, "improper": (ff.terms["improper"][0][with_h], ff.terms["improper"][1][with_h])}
        ff._plan_vectors()
        return float(ff.energies(torch.from_numpy(z), torch.from_numpy(box))["improper"])

    flat = x.copy()
    for h, a in zip(moves.hydrogens, moves.anchors):  # into the plane of its anchor and the anchor's neighbours
        ring = impropers.indices[with_h & (impropers.indices == h).any(1)][0]
        direction = x[a] - x[[i for i in ring if i != h]].mean(0)
        flat[h] = x[a] + np.linalg.norm(x[h] - x[a]) * direction / np.linalg.norm(direction)
    assert out_of_plane(flat) < 1e-6
    for kelvin in (100.0, 568.0):
        drawn = thermalise_hydrogens(flat, box, moves, kelvin, generator=torch.Generator().manual_seed(0))
        equipartition = with_h.sum() * BOLTZMANN * kelvin / 2
        assert 0.6 < out_of_plane(drawn) / equipartition < 1.3
