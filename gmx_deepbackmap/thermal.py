"""Hydrogens drawn from their Boltzmann distribution given the heavy atoms (Metropolis).

The generator places an atom at the centre of a density on a 0.15 nm grid; the thermal spread of
a hydrogen about its heavy-atom frame is a few hundredths of a nm, and the generated hydrogens come
out nearly ideal: on sPS at 568 K the ring hydrogens' out-of-plane (improper) energy is a third of
the reference's and their in-plane bending half of it. With every heavy atom held, the exact
conditional distribution of the hydrogens is known from the force field, exp(-U / k_B T), so the
sampler finishes with Metropolis sweeps over the hydrogens alone at the temperature of the CG frames
(a Gibbs step whose conditional is the force field's, not the network's). Each move turns one
hydrogen about its bonded heavy atom, keeping its bond length (constrained in the reference
ensemble). Heavy atoms never move; this is sampling at temperature T, not a minimisation.

Hydrogens are moved group by group: no two in a group share a bonded term or lie within
`COUPLING_RANGE` of each other, and each move is accepted on its energy change as if it alone were
made; what the other moves of the group add to it is second order in the step (sPS ring hydrogens
0.4 nm apart, 0.02 nm steps: about 0.02 kJ/mol, against k_B T = 2.6-4.7 kJ/mol).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .energies import BONDED_TERMS, ForceField, contains_sorted, lj_row_energies, vector_energies
from .environment import graph_colours
from .pbc import image_shifts, minimum_image, neighbour_pairs
from .topology import Topology

BOLTZMANN = 0.0083144626  # kJ/mol/K
COUPLING_RANGE = 0.4  # nm: hydrogens closer than this (or sharing a term) are never moved together
NEIGHBOUR_SKIN = 0.1  # nm beyond the cut-off kept in the pair list (made once; a pair that comes in from
# further away is missed, where the shifted Lennard-Jones and the reaction-field Coulomb are near zero)
DEFAULT_SWEEPS = 40
TARGET_ACCEPTANCE = 0.4  # the move size is tuned towards this in the first half of the sweeps
INITIAL_STEP = 0.1  # radians: about the thermal out-of-plane spread of an sPS ring hydrogen at 568 K


@dataclass(frozen=True)
class HydrogenMoves:
    """Which hydrogens move, about which atom, and which bonded terms each move changes."""

    force_field: ForceField  # of the whole system: cut-off, reaction field, Lennard-Jones tables, charges
    hydrogens: np.ndarray  # (H,) atom indices, each bonded to exactly one atom
    anchors: np.ndarray  # (H,) the atom each is bonded to
    # term name -> (atoms (T, k), parameters (T, p) in topology units, the moving hydrogen (T,) as
    # an index into `hydrogens`): one row per term and hydrogen in it; `[ pairs ]` rows carry their
    # scaled f q_i q_j as a third parameter
    bonded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    excluded_keys: np.ndarray  # the topology's exclusions as i * N + j (i < j), ascending


def hydrogen_moves(topology: Topology, force_field: ForceField, planar_only: bool = False) -> HydrogenMoves:
    """The hydrogens of a topology that can turn about their one bond (or constraint), and the
    bonded terms (`[ pairs ]` included) each one is part of. `planar_only`: only those in an
    improper dihedral (held in a plane: sp2 C-H)."""
    bonds = np.concatenate([topology.bonds.indices, topology.constraints.indices]).reshape(-1, 2)
    degree = np.bincount(bonds.ravel(), minlength=topology.n_atoms)
    chosen = (topology.elements == "H") & (degree == 1)
    if planar_only:
        improper = np.concatenate([topology.impropers.indices, topology.periodic_impropers.indices]).ravel()
        chosen &= np.isin(np.arange(topology.n_atoms), improper)
    slot = np.full(topology.n_atoms, -1)
    hydrogens = np.flatnonzero(chosen)
    slot[hydrogens] = np.arange(len(hydrogens))
    anchors = np.empty(len(hydrogens), dtype=np.int64)
    for end in (0, 1):
        moving = slot[bonds[:, end]] >= 0
        anchors[slot[bonds[moving, end]]] = bonds[moving, 1 - end]
    bonded = {}
    for name, attribute in {**BONDED_TERMS, "pairs": "pairs"}.items():
        terms = getattr(topology, attribute)
        rows, column = np.nonzero(slot[terms.indices] >= 0) if len(terms) else (np.zeros(0, dtype=np.int64),) * 2
        idx, params = terms.indices[rows], terms.params[rows]
        if name == "pairs":
            charges = topology.charges[idx]
            params = np.column_stack([params, topology.fudge_qq * force_field.f_elec * charges[:, 0] * charges[:, 1]])
        bonded[name] = (idx, params, slot[idx[np.arange(len(rows)), column]])
    keys = np.unique(topology.exclusions[:, 0] * topology.n_atoms + topology.exclusions[:, 1])
    return HydrogenMoves(force_field, hydrogens, anchors, bonded, keys)


def _groups(moves: HydrogenMoves, positions: np.ndarray, box: np.ndarray) -> list[np.ndarray]:
    """Indices into `moves.hydrogens`, coloured (`graph_colours`) so that no two of one colour share
    a bonded term or lie within `COUPLING_RANGE`."""
    n = len(moves.hydrogens)
    edges = [neighbour_pairs(positions[moves.hydrogens], box, COUPLING_RANGE)[0]]
    for idx, _, mover in moves.bonded.values():  # rows of one term are adjacent, one per hydrogen in it
        same_term = (idx[1:] == idx[:-1]).all(1) if len(idx) else np.zeros(0, dtype=bool)
        edges.append(np.stack([mover[:-1][same_term], mover[1:][same_term]], 1))
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in np.concatenate(edges).reshape(-1, 2).tolist():
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    padded = np.full((n, max((len(nb) for nb in neighbours), default=0) + 1), -1)
    for h, nb in enumerate(neighbours):
        padded[h, :len(nb)] = sorted(nb)
    colour = graph_colours(padded, np.arange(n))
    return [np.flatnonzero(colour == c) for c in range(colour.max(initial=-1) + 1)]


class _GroupEnergy:
    """Energy (kJ/mol) of each hydrogen of one group with everything around it: its bonded
    terms, and its Lennard-Jones and reaction-field Coulomb pairs (`ForceField`'s forms). Periodic
    images are fixed when built from `x`: moves keep each hydrogen in its image."""

    def __init__(self, moves: HydrogenMoves, x: torch.Tensor, box: torch.Tensor, pairs: np.ndarray,
                 shifts: np.ndarray, group: np.ndarray):
        force_field = moves.force_field
        n_atoms = force_field.n_atoms
        member = np.full(len(moves.hydrogens), -1)
        member[group] = np.arange(len(group))
        self.size, self.ff = len(group), force_field
        self.bonded = []
        for name, (idx, params, mover) in moves.bonded.items():
            rows = member[mover] >= 0
            if rows.any():
                atoms = torch.from_numpy(idx[rows])
                bond_shifts = [image_shifts(x[atoms[:, k + 1]] - x[atoms[:, k]], box)
                               for k in range(atoms.shape[1] - 1)]
                self.bonded.append((name, atoms, bond_shifts, torch.from_numpy(params[rows]),
                                    torch.from_numpy(member[mover[rows]])))
        where = np.full(n_atoms, -1)
        where[moves.hydrogens[group]] = np.arange(len(group))
        # each pair once per end that is in the group; `shift` makes x[other] - x[atom] the minimum image
        own, other, shift = [], [], []
        for end, sign in ((0, 1.0), (1, -1.0)):
            rows = where[pairs[:, end]] >= 0
            own.append(where[pairs[rows, end]])
            other.append(pairs[rows, 1 - end])
            shift.append(sign * shifts[rows])
        own_np, other_np = np.concatenate(own), np.concatenate(other)
        atom_np = moves.hydrogens[group][own_np]
        keys = np.minimum(atom_np, other_np) * n_atoms + np.maximum(atom_np, other_np)
        excluded = contains_sorted(moves.excluded_keys, keys)
        self.own, self.atom, self.other = (torch.from_numpy(a) for a in (own_np, atom_np, other_np))
        self.members = torch.from_numpy(moves.hydrogens[group])
        self.shift, self.excluded = torch.from_numpy(np.concatenate(shift)), torch.from_numpy(excluded)
        self.parameters = force_field.pair_parameters(self.atom, self.other)

    def __call__(self, members: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n,) with the group's hydrogens at `members` (n, 3) and every other atom, the other
        members included, where it stands in `x`: each member's energy as if it alone moved."""
        out = torch.zeros(self.size, dtype=torch.float64)
        alone = x.index_put((self.members,), members)  # no term holds two members
        for name, idx, bond_shifts, params, owner in self.bonded:
            vectors = [alone[idx[:, k + 1]] - alone[idx[:, k]] + shift for k, shift in enumerate(bond_shifts)]
            out.index_add_(0, owner, self._bonded(name, vectors, params))
        r2 = (x[self.other] - members[self.own] + self.shift).square().sum(-1)
        lj, coulomb = self.ff.pair_rows(r2, *self.parameters, excluded=self.excluded)
        return out.index_add_(0, self.own, lj + coulomb)

    def _bonded(self, name: str, vectors: list[torch.Tensor], params: torch.Tensor) -> torch.Tensor:
        if name != "pairs":
            return vector_energies(name, vectors, params)
        r2 = vectors[0].square().sum(-1)  # 1-4 pairs: plain LJ, Coulomb scaled by fudgeQQ, no cut-off
        return lj_row_energies(r2, params[:, 0], params[:, 1], float("inf"), shift=False) + params[:, 2] * r2.rsqrt()


def thermalise_hydrogens(positions: np.ndarray | torch.Tensor, box: np.ndarray, moves: HydrogenMoves,
                         temperature: float, sweeps: int = DEFAULT_SWEEPS,
                         generator: torch.Generator | None = None) -> np.ndarray:
    """Positions (N, 3) nm with the hydrogens of `moves` resampled by `sweeps` Metropolis sweeps at
    `temperature` (K), every other atom held. Every random draw comes from `generator`."""
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64)).clone()
    if not len(moves.hydrogens) or sweeps < 1:
        return x.numpy()
    box_np = np.asarray(box, dtype=np.float64)
    box_t = torch.as_tensor(box_np)
    beta = 1.0 / (BOLTZMANN * temperature)
    pairs, shifts = neighbour_pairs(x.numpy(), box_np, moves.force_field.cutoff + NEIGHBOUR_SKIN)
    groups = _groups(moves, x.numpy(), box_np)
    energies = [_GroupEnergy(moves, x, box_t, pairs, shifts, g) for g in groups]
    hydrogens, anchors = torch.from_numpy(moves.hydrogens), torch.from_numpy(moves.anchors)
    step = INITIAL_STEP
    for sweep in range(sweeps):
        accepted = 0
        for group, energy in zip(groups, energies):
            h, a = hydrogens[group], anchors[group]
            old = x[h]
            bond = minimum_image(old - x[a], box_t)
            length = bond.norm(dim=-1, keepdim=True)
            turned = bond / length + step * torch.randn(bond.shape, generator=generator, dtype=torch.float64)
            new = old + length * turned / turned.norm(dim=-1, keepdim=True) - bond  # same periodic image
            change = energy(new, x) - energy(old, x)
            accept = torch.rand(len(h), generator=generator, dtype=torch.float64) < torch.exp(-beta * change)
            x[h] = torch.where(accept[:, None], new, old)
            accepted += int(accept.sum())
        if sweep < sweeps // 2:
            step *= float(np.exp(accepted / len(hydrogens) - TARGET_ACCEPTANCE))
    return x.numpy()
