"""The reconstruction plan of a molecule type: in which order atoms are placed, and how every
other atom relates to the one being placed (the feature channels of DeepBackmap).

Order (method.md section 2): beads depth-first along the CG graph from the first bead; inside a
bead, heavy atoms depth-first from the atom bonded to an earlier bead, then its hydrogens. The
whole structure is built in two phases, all heavy atoms first, then all hydrogens; a `Step` is the
atom sequence of one bead in one phase.

Relations (method.md section 3): an existing atom is a bond, angle, proper-dihedral or improper
partner of the atom being placed, a non-bonded (LJ) partner, or excluded without a bonded term
between them; each relation is split by the existing atom's force-field type. Atoms of other
molecules are LJ partners. Nothing here is specific to a molecule: everything comes from the
topology and the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RELATIONS = ("bond", "angle", "dihedral", "improper", "lj", "excluded")
BOND, ANGLE, DIHEDRAL, IMPROPER, LJ, EXCLUDED = range(len(RELATIONS))
HEAVY, HYDROGEN = "heavy", "hydrogen"


@dataclass(frozen=True)
class Step:
    """The atoms of one bead placed in one phase, in placement order (local atom indices)."""

    bead: int
    phase: str
    atoms: tuple[int, ...]


@dataclass(frozen=True)
class MoleculePlan:
    """Everything about one molecule type that the networks' inputs are built from."""

    name: str
    bead_order: tuple[int, ...]  # local bead indices in reconstruction order
    bead_rank: np.ndarray  # (n_beads,) position of each bead in bead_order
    frame_reference: np.ndarray  # (n_beads,) the frame's z axis points from this bead to the bead
    steps: tuple[Step, ...]  # heavy steps in bead order, then hydrogen steps in bead order
    relation: np.ndarray  # (n_atoms, n_atoms) int8: relation of atom j to atom i being placed
    owner: np.ndarray  # (n_atoms,) local bead owning (reconstructing) each atom
    heavy: np.ndarray  # (n_atoms,) bool


@dataclass(frozen=True)
class FeatureLayout:
    """Channel layout of the voxelised environment, derived from topology and mapping."""

    atom_types: tuple[str, ...]  # force-field types, also the one-hot of the atom to place
    bead_types: tuple[str, ...]

    @property
    def n_atom_channels(self) -> int:
        return len(RELATIONS) * len(self.atom_types)

    @property
    def n_channels(self) -> int:
        return self.n_atom_channels + len(self.bead_types)

    def atom_channel(self, relation: np.ndarray, type_index: np.ndarray) -> np.ndarray:
        """Channel of existing atoms with the given relation and force-field type index."""
        return relation * len(self.atom_types) + type_index

    def bead_channel(self, bead_type_index: np.ndarray) -> np.ndarray:
        return self.n_atom_channels + bead_type_index

    def to_dict(self) -> dict:
        return {"atom_types": list(self.atom_types), "bead_types": list(self.bead_types), "relations": list(RELATIONS)}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureLayout:
        return cls(tuple(data["atom_types"]), tuple(data["bead_types"]))


def relation_matrix(n_atoms: int, terms: dict[str, np.ndarray], exclusions: np.ndarray) -> np.ndarray:
    """(n, n) relation of atom j to atom i; the closest bonded relation wins.

    `terms` maps "bonds", "angles", "propers", "impropers" to local index tuples (rows); every
    atom of a term is a partner of every other atom of it.
    """
    relation = np.full((n_atoms, n_atoms), LJ, dtype=np.int8)
    excluded = exclusions.reshape(-1, 2)
    relation[excluded[:, 0], excluded[:, 1]] = EXCLUDED
    relation[excluded[:, 1], excluded[:, 0]] = EXCLUDED
    for name, code in (("impropers", IMPROPER), ("propers", DIHEDRAL), ("angles", ANGLE), ("bonds", BOND)):
        rows = terms[name]
        for a in range(rows.shape[1]):
            for b in range(rows.shape[1]):
                if a != b:
                    relation[rows[:, a], rows[:, b]] = code
    np.fill_diagonal(relation, EXCLUDED)
    return relation


def reconstruction_order(bead_edges: np.ndarray, first_bead: int, n_beads: int) -> tuple[int, ...]:
    """Beads depth-first along the CG graph, lower indices first among neighbours."""
    neighbours = _adjacency(bead_edges, n_beads)
    order, seen = [], set()
    stack = [first_bead]
    while stack:
        bead = stack.pop()
        if bead in seen:
            continue
        seen.add(bead)
        order.append(bead)
        stack.extend(sorted(neighbours[bead] - seen, reverse=True))
    order += [b for b in range(n_beads) if b not in seen]  # disconnected beads, e.g. ions
    return tuple(order)


def bead_steps(
    bead_order: tuple[int, ...], owned: list[list[int]], heavy: np.ndarray, bonds: np.ndarray
) -> tuple[Step, ...]:
    """Atom sequences of every bead: all heavy-atom steps in bead order, then all hydrogen steps."""
    neighbours = _adjacency(bonds, len(heavy))
    placed: set[int] = set()
    heavy_steps, hydrogen_steps = [], []
    for bead in bead_order:
        atoms = [a for a in owned[bead] if heavy[a]]
        sequence = _depth_first(atoms, neighbours, placed)
        placed |= set(sequence)
        if sequence:
            heavy_steps.append(Step(bead, HEAVY, tuple(int(a) for a in sequence)))
    for step in heavy_steps:
        parents = {a: i for i, a in enumerate(step.atoms)}
        hydrogens = [a for a in owned[step.bead] if not heavy[a]]
        hydrogens.sort(
            key=lambda h: (min((parents.get(n, len(parents)) for n in neighbours[h]), default=len(parents)), h)
        )
        if hydrogens:
            hydrogen_steps.append(Step(step.bead, HYDROGEN, tuple(int(h) for h in hydrogens)))
    placed_beads = {s.bead for s in heavy_steps}
    for bead in bead_order:  # beads made of hydrogens only
        if bead not in placed_beads and owned[bead]:
            hydrogen_steps.append(Step(bead, HYDROGEN, tuple(sorted(int(a) for a in owned[bead]))))
    return tuple(heavy_steps + hydrogen_steps)


def _depth_first(atoms: list[int], neighbours: list[set[int]], placed: set[int]) -> list[int]:
    """Heavy atoms of a bead depth-first, starting at the atom bonded to an already placed atom."""
    remaining = set(atoms)
    sequence: list[int] = []
    while remaining:
        anchored = sorted(a for a in remaining if neighbours[a] & (placed | set(sequence)))
        stack = [anchored[0] if anchored else min(remaining)]
        while stack:
            atom = stack.pop()
            if atom not in remaining:
                continue
            remaining.discard(atom)
            sequence.append(atom)
            stack.extend(sorted(neighbours[atom] & remaining, reverse=True))
    return sequence


def _adjacency(edges: np.ndarray, n: int) -> list[set[int]]:
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in np.asarray(edges, dtype=np.int64).reshape(-1, 2):
        neighbours[i].add(int(j))
        neighbours[j].add(int(i))
    return neighbours
