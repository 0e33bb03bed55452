"""The sampler's last stage: Metropolis sweeps with the force field at the CG frames' temperature.

The generator places each atom at the centre of a density on a 0.15 nm grid and learns the
conditional distribution of a whole local environment from a few frames; what it draws is close
in shape but not in its thermal spread (sPS at 568 K: ring hydrogens nearly ideal, backbone angles
and dihedrals too strained). Given the other atoms, the conditional distribution of a small group
of atoms is known exactly from the force field, exp(-U / k_B T), so the sampler finishes with a
few Metropolis sweeps over such groups at the temperature of the CG frames: Gibbs steps whose
conditional is the force field's instead of the network's. This is sampling at T, not a
minimisation, and it is local: every move is a rigid turn of a few atoms.

Moves keep every bond length (bonds are constrained in the reference ensemble, and the
`[ constraints ]` of a topology count as bonds):

- "hydrogen": a hydrogen with one bond turns about the atom it is bonded to;
- "crankshaft": a heavy atom with what hangs off it (its hydrogens, a side group) turns about the
  axis through two of its heavy neighbours;
- "pivot": a side group (what hangs off a heavy atom through one bond) turns about that atom;
- "rotor": the terminal hydrogens of a heavy atom A bonded to one heavy atom X (X-AH_n, n >= 2: a
  methyl, an amine) turn together about the X-A axis, the rotation single hydrogen turns cannot
  make without bending the H-A-H angles;
- "torsion": what hangs off a heavy atom A away from a heavy neighbour X (more than terminal
  atoms) turns about the X-A axis (a bond in no ring): the move that changes a dihedral and no bond or
  angle (n-octane's C-C-C-C torsions: crankshafts and pivots change them only by bending stiff
  angles).

A group is at most `MAX_GROUP` atoms. Each CG bead's centre is held near its CG position by a
harmonic restraint whose thermal spread is `centre_spread` (`SamplerConfig`), so the stage keeps the structure on its
CG frame (without it, 20 sweeps took the sPS bead centres from 0.020 to 0.049 nm RMS off theirs).
The restraint is looser than the exact one (the reference maps onto its CG frames to 0.0005 nm)
because the generated atoms are not on their CG frame either (0.020 nm RMS at 568 K, 0.015 at
313 K) and rigid local turns cannot bring them onto it without straining what lies between.

Groups are moved colour by colour: no two of one colour share an atom, a bonded term or a bead,
turn about an atom the other moves, or come within `COUPLING_RANGE` of each other. Each move is
accepted on its energy change as if it alone were made; what the other moves of the colour add is
second order in the step. The Lennard-Jones and reaction-field pairs of the moved atoms (some 11
million per sweep of an sPS frame) are summed by a compiled loop (`_pair_changes`, numba), and so
are the bonded terms (`_bonded_changes`) and the chirality check (`_mark_inverting`); the restraint
and the proposals are torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .config import DEFAULTS, THERMAL_SELECTIONS
from .energies import ForceField, contains_sorted
from .environment import graph_colours
from .forms import FORMS
from .mapping import Mapping
from .parallel import FAST_MATH, match_torch_threads
from .pbc import image_shifts, minimum_image, neighbour_pairs
from .stereo import MIN_VOLUME
from .topology import Topology

BOLTZMANN = 0.0083144626  # kJ/mol/K
# What the stage moves (`config.THERMAL_SELECTIONS`): "groups" (every kind of move), "hydrogens"
# (hydrogens only), "planar-hydrogens" (the hydrogens held in a plane by an improper dihedral: sp2 C-H)
SELECTIONS = THERMAL_SELECTIONS
KINDS = ("hydrogen", "crankshaft", "pivot", "rotor", "torsion")
INITIAL_STEP = {
    "hydrogen": 0.1,
    "crankshaft": 0.06,
    "pivot": 0.03,
    "rotor": 0.3,
    "torsion": 0.1,
}  # radians, tuned during the first half
TARGET_ACCEPTANCE = 0.4
MAX_GROUP = 16  # atoms moved by one move at most (an sPS methine with its phenyl: 13)
COUPLING_RANGE = 0.4  # nm: groups with atoms closer than this are never moved together
NEIGHBOUR_SKIN = 0.1  # nm beyond the cut-off kept in the pair list (made once per frame; a pair that comes in
# from further away is missed, where the shifted Lennard-Jones and the reaction-field Coulomb are near zero)


@dataclass(frozen=True)
class CentreMembers:
    """Which atoms make each CG bead's centre, with their normalised weights (`Mapping`'s)."""

    atoms: np.ndarray  # (K,)
    beads: np.ndarray  # (K,)
    weights: np.ndarray  # (K,)


@dataclass(frozen=True)
class ThermalMoves:
    """The moves of a topology: which atoms each turns, about what, and what the energies need."""

    force_field: ForceField  # of the whole system: cut-off, reaction field, Lennard-Jones tables, charges
    starts: np.ndarray  # (G + 1,) move g turns atoms[starts[g]:starts[g + 1]]
    atoms: np.ndarray  # (sum of sizes,)
    pivots: np.ndarray  # (G, 2) the atom turned about, and the axis' second atom (crankshafts, rotors) or -1
    kinds: np.ndarray  # (G,) index into KINDS
    excluded_keys: np.ndarray  # the topology's exclusions as i * N + j (i < j), ascending
    conflicts: np.ndarray  # (E, 2) moves that share an atom, a term, a bead or a pivot: never together
    centres: CentreMembers | None  # the beads held near their CG positions; None: no restraint
    chiral: tuple[np.ndarray, np.ndarray]  # centres (C, 4) [centre, a, b, d] and signs (C,) no move may invert

    @property
    def owners(self) -> np.ndarray:
        """(sum of sizes,) the move of each entry of `atoms`."""
        return np.repeat(np.arange(len(self.kinds)), np.diff(self.starts))


def thermal_moves(
    topology: Topology,
    force_field: ForceField,
    selection: str = "groups",
    mapping: Mapping | None = None,
    chiral: tuple[np.ndarray, np.ndarray] | None = None,
) -> ThermalMoves:
    """The moves of `selection` (`SELECTIONS`) in a topology; with a `mapping`, bead centres are
    restrained to the CG positions given to `thermalise`; moves that would invert or flatten one of
    the `chiral` centres (atoms (C, 4) and signs (C,) as from `stereo.system_stereo`) are refused."""
    neighbours = _bonded_neighbours(topology)
    heavy = topology.elements != "H"
    found: dict[tuple[frozenset, tuple[int, int]], int] = {}
    in_improper = np.zeros(topology.n_atoms, dtype=bool)
    in_improper[np.concatenate([topology.impropers.indices, topology.periodic_impropers.indices]).ravel()] = True
    for a in range(topology.n_atoms):
        if not heavy[a]:
            if len(neighbours[a]) == 1 and (selection != "planar-hydrogens" or in_improper[a]):
                found[(frozenset([a]), (neighbours[a][0], -1))] = KINDS.index("hydrogen")
            continue
        if selection != "groups":
            continue
        for p in neighbours[a]:
            group = _hanging(neighbours, a, (p,))
            if group is not None:
                found.setdefault((group, (p, -1)), KINDS.index("pivot"))
        axis_atoms = [p for p in neighbours[a] if heavy[p]]
        for p in axis_atoms:
            group = _beyond(neighbours, a, p)
            if group:
                found.setdefault((group, (a, p)), KINDS.index("torsion"))
        rotor = _terminal_hydrogens(neighbours, heavy, a)
        if len(axis_atoms) == 1 and len(rotor) >= 2:
            found[(rotor, (a, axis_atoms[0]))] = KINDS.index("rotor")
        for k, p in enumerate(axis_atoms):
            for q in axis_atoms[k + 1 :]:
                group = _hanging(neighbours, a, (p, q))
                if group is not None:
                    found.setdefault((group, (min(p, q), max(p, q))), KINDS.index("crankshaft"))
    moves = list(found.items())
    starts = np.cumsum([0] + [len(group) for (group, _), _ in moves]).astype(np.int64)
    atoms = np.array([i for (group, _), _ in moves for i in sorted(group)], dtype=np.int64)
    pivots = np.array([pivot for (_, pivot), _ in moves], dtype=np.int64).reshape(-1, 2)
    kinds = np.array([kind for _, kind in moves], dtype=np.int64)
    centres = (
        None if mapping is None else CentreMembers(mapping.member_atoms, mapping.member_beads, mapping.member_weights)
    )
    keys = np.unique(topology.exclusions[:, 0] * topology.n_atoms + topology.exclusions[:, 1])
    if chiral is None:
        chiral = (np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64))
    moves = ThermalMoves(
        force_field,
        starts,
        atoms,
        pivots,
        kinds,
        keys,
        np.zeros((0, 2), np.int64),
        centres,
        (np.asarray(chiral[0], dtype=np.int64).reshape(-1, 4), np.asarray(chiral[1])),
    )
    return dataclasses.replace(moves, conflicts=_conflicts(moves, topology.n_atoms))


def _bonded_neighbours(topology: Topology) -> list[list[int]]:
    bonds = np.concatenate([topology.bonds.indices, topology.constraints.indices]).reshape(-1, 2)
    neighbours: list[list[int]] = [[] for _ in range(topology.n_atoms)]
    for i, j in bonds.tolist():
        neighbours[i].append(j)
        neighbours[j].append(i)
    return neighbours


def _terminal_hydrogens(neighbours: list[list[int]], heavy: np.ndarray, atom: int) -> frozenset:
    """The hydrogens bonded to `atom` and to nothing else."""
    return frozenset(h for h in neighbours[atom] if not heavy[h] and len(neighbours[h]) == 1)


def _hanging(neighbours: list[list[int]], start: int, held: tuple[int, ...]) -> frozenset | None:
    """The atoms joined to `start` once the `held` atoms are taken out (a turn about the held atoms
    keeps every bond length), if they are at most `MAX_GROUP`; else None. Crankshafts whose axis
    atoms bond to more of the group than `start` are left out too: they turn part of a ring about
    an axis through another of its atoms, which the ring's turn about its base atom covers (sPS:
    20 % fewer moved atoms per sweep)."""
    seen, todo = {start}, [start]
    while todo:
        for b in neighbours[todo.pop()]:
            if b not in held and b not in seen:
                if len(seen) == MAX_GROUP:
                    return None
                seen.add(b)
                todo.append(b)
    if len(held) > 1 and any(sum(b in seen for b in neighbours[h]) != 1 for h in held):
        return None
    return frozenset(seen)


def _beyond(neighbours: list[list[int]], a: int, p: int) -> frozenset | None:
    """What hangs off `a` away from its neighbour `p` (without `a`), if the bond p-a is in no ring
    and the group has an atom with bonds of its own and at most `MAX_GROUP` atoms: turned about the
    p-a axis it changes the dihedrals about that bond and no bond or angle. Groups of terminal atoms
    only (a methyl's hydrogens) are left to the rotor moves."""
    group = _hanging(neighbours, a, (p,))
    if group is None or any(b in group for b in neighbours[p] if b != a):
        return None
    group = group - {a}
    return group if any(len(neighbours[b]) > 1 for b in group) else None


def _csr(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Order and start offsets that list the entries of `rows` (values < n) by value."""
    order = np.argsort(rows, kind="stable")
    return order, np.searchsorted(rows[order], np.arange(n + 1))


def _gather(order: np.ndarray, starts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `values`, the entries listed for it (`_csr`): (which value, entry) pairs."""
    counts = starts[values + 1] - starts[values]
    which = np.repeat(np.arange(len(values)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return which, order[starts[values][which] + offsets]


def _mover_pairs(moves: ThermalMoves, atom_pairs: np.ndarray, n_atoms: int) -> np.ndarray:
    """(E, 2) moves that move the first and the second atom of any of `atom_pairs`."""
    order, starts = _csr(moves.atoms, n_atoms)
    owners = moves.owners
    row, first = _gather(order, starts, atom_pairs[:, 0])
    row2, second = _gather(order, starts, atom_pairs[row, 1])
    return np.stack([owners[first[row2]], owners[second]], 1)


def _conflicts(moves: ThermalMoves, n_atoms: int) -> np.ndarray:
    """Moves that touch the same atom, term or bead, or where one moves the other's pivot."""
    links = [np.repeat(np.arange(n_atoms)[:, None], 2, 1)]
    for idx, _ in moves.force_field.terms.values():
        idx = idx.numpy()
        for a in range(idx.shape[1]):
            for b in range(a + 1, idx.shape[1]):
                links.append(idx[:, [a, b]])
    if moves.centres is not None:  # atoms of one bead
        order, starts = _csr(moves.centres.beads, int(moves.centres.beads.max(initial=-1)) + 1)
        which, other = _gather(order, starts, moves.centres.beads)
        links.append(np.stack([moves.centres.atoms[which], moves.centres.atoms[other]], 1))
    pivot_rows = np.flatnonzero(moves.pivots.ravel() >= 0)
    pivot_of = np.stack([pivot_rows // 2, moves.pivots.ravel()[pivot_rows]], 1)  # (move, pivot atom)
    edges = [_mover_pairs(moves, np.concatenate(links), n_atoms)]
    order, starts = _csr(moves.atoms, n_atoms)
    which, entry = _gather(order, starts, pivot_of[:, 1])
    edges.append(np.stack([pivot_of[which, 0], moves.owners[entry]], 1))
    return _unique_edges(np.concatenate(edges), len(moves.kinds))


def _unique_edges(edges: np.ndarray, n: int) -> np.ndarray:
    edges = np.sort(edges[edges[:, 0] != edges[:, 1]], 1)
    keys = np.unique(edges[:, 0] * n + edges[:, 1])
    return np.stack([keys // n, keys % n], 1)


def _colours(moves: ThermalMoves, close: np.ndarray, n_atoms: int) -> list[np.ndarray]:
    """Moves coloured (`graph_colours`) so that none of one colour conflict or move atoms of one of
    the `close` (P, 2) atom pairs."""
    n = len(moves.kinds)
    edges = _unique_edges(np.concatenate([moves.conflicts, _mover_pairs(moves, close, n_atoms)]), n)
    both = np.concatenate([edges, edges[:, ::-1]])
    order, starts = _csr(both[:, 0], n)
    padded = np.full((n, int(np.diff(starts).max(initial=0)) + 1), -1)
    padded[both[order, 0], np.arange(len(both)) - starts[both[order, 0]]] = both[order, 1]
    colour = graph_colours(padded, np.arange(n))
    return [np.flatnonzero(colour == c) for c in range(colour.max(initial=-1) + 1)]


@dataclass(frozen=True)
class _PairList:
    """Every pair within the cut-off plus `NEIGHBOUR_SKIN` listed from both ends, by atom (`_csr`),
    with what `_pair_changes` reads of it: periodic images and energy coefficients."""

    atom: np.ndarray  # (2P,)
    other: np.ndarray  # (2P,)
    shift: np.ndarray  # (2P, 3) nm: x[other] - x[atom] + shift is the minimum image
    images: np.ndarray  # (2P, 3) int8: shift in box vectors (3 bytes a row instead of 24)
    coefficients: np.ndarray  # (2P, 5) `_pair_coefficients`
    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, box: np.ndarray, moves: ThermalMoves) -> _PairList:
        force_field = moves.force_field
        pairs, shifts = neighbour_pairs(x, box, force_field.cutoff + NEIGHBOUR_SKIN)
        i, j = pairs[:, 0], pairs[:, 1]
        excluded = contains_sorted(moves.excluded_keys, np.minimum(i, j) * force_field.n_atoms + np.maximum(i, j))
        coefficients = _pair_coefficients(force_field, i, j, excluded)
        images = np.rint(shifts @ np.linalg.inv(box)).astype(np.int8)
        atom = np.concatenate([i, j])
        return cls(
            atom,
            np.concatenate([j, i]),
            np.concatenate([shifts, -shifts]),
            np.concatenate([images, -images]),
            np.concatenate([coefficients, coefficients]),
            *_csr(atom, len(x)),
        )

    def close(self, x: np.ndarray, distance: float) -> np.ndarray:
        """(P, 2) the pairs closer than `distance`, each once."""
        d = x[self.other] - x[self.atom] + self.shift
        keep = (self.atom < self.other) & (np.einsum("ij,ij->i", d, d) < distance**2)
        return np.stack([self.atom[keep], self.other[keep]], 1)


class _ColourEnergy:
    """Energy change (kJ/mol) of each move of one colour made alone: its bonded terms, its
    Lennard-Jones and reaction-field Coulomb pairs (`ForceField`'s forms) and the centre restraint
    of its beads. Periodic images are fixed when built from `x`: moves keep atoms in their image."""

    def __init__(
        self,
        moves: ThermalMoves,
        colour: np.ndarray,
        x: torch.Tensor,
        box: torch.Tensor,
        pairs: _PairList,
        stiffness: float,
    ):
        force_field = moves.force_field
        n_atoms = force_field.n_atoms
        entries = np.concatenate([np.arange(moves.starts[g], moves.starts[g + 1]) for g in colour])
        members, owner = moves.atoms[entries], np.repeat(np.arange(len(colour)), np.diff(moves.starts)[colour])
        where = np.full(n_atoms, -1)
        where[members] = owner
        self.size, self.ff, self.stiffness = len(colour), force_field, stiffness
        self.members, self.owner = torch.from_numpy(members), torch.from_numpy(owner)
        self.kinds = torch.from_numpy(moves.kinds[colour])
        pivot, second = (torch.from_numpy(moves.pivots[colour, k]) for k in (0, 1))
        self.axes = (
            pivot,
            second,
            image_shifts(x[second.clamp(min=0)] - x[pivot], box),
        )  # crankshafts' and rotors' axes
        self.member_pivots = pivot[self.owner]
        self.arm_shifts = image_shifts(x[self.members] - x[self.member_pivots], box)
        self.slot = np.full(n_atoms, -1)  # each atom's row in `members`, or -1
        self.slot[members] = np.arange(len(members))
        self.bonded = _bonded_rows(force_field, where, x, box)
        which, entry = _gather(pairs.order, pairs.starts, members)
        other = pairs.other[entry]
        keep = where[other] != owner[which]
        which, entry, other = which[keep], entry[keep], other[keep]  # grouped by moved atom (`which`)
        self.pair_starts = np.searchsorted(which, np.arange(len(members) + 1))
        self.other, self.box = other.astype(np.int32), box.numpy()
        self.images, self.coefficients = pairs.images[entry], pairs.coefficients[entry]
        centres, signs = moves.chiral
        local = where[centres]
        rows = (local >= 0).any(1)  # no two groups of a colour touch one centre (they share its angles)
        atoms = torch.from_numpy(centres[rows])
        self.chiral = (
            atoms.numpy(),
            np.stack([image_shifts(x[atoms[:, k]] - x[atoms[:, 0]], box).numpy() for k in (1, 2, 3)], 1).reshape(
                -1, 3, 3
            ),
            signs[rows].astype(np.float64),
            local[rows].max(1),
        )
        self.centres = None
        if moves.centres is not None and stiffness > 0:
            rows = where[moves.centres.atoms] >= 0
            beads = moves.centres.beads[rows]
            self.centres = (
                torch.from_numpy(self.slot[moves.centres.atoms[rows]]),
                torch.from_numpy(beads),
                torch.from_numpy(moves.centres.weights[rows]),
                torch.from_numpy(np.unique(beads)),
            )
            bead_owner = np.zeros(int(beads.max(initial=0)) + 1, dtype=np.int64)
            bead_owner[beads] = where[moves.centres.atoms[rows]]
            self.bead_owner = torch.from_numpy(bead_owner)

    def change(
        self, new: torch.Tensor, old: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor | None
    ) -> torch.Tensor:
        """(n,) each group's energy change with the colour's atoms moved from `old` to `new` (m, 3),
        one move at a time (in `x`: `old`), infinite where the colour's move would put a recorded
        chiral centre in its mirror image or flat; `offsets`: the bead centres minus their CG
        positions."""
        x_np, old_np, new_np = x.numpy(), old.numpy(), new.numpy()
        pairs = _pair_changes(
            x_np,
            old_np,
            new_np,
            self.other,
            self.images,
            self.box,
            self.pair_starts,
            self.coefficients,
            self.ff.cutoff**2,
        )
        out = np.bincount(self.owner.numpy(), pairs, minlength=self.size)
        _bonded_changes(x_np, self.slot, old_np, new_np, *self.bonded, out)
        _mark_inverting(x_np, self.slot, new_np, *self.chiral, MIN_VOLUME, out)
        change = torch.from_numpy(out)
        if self.centres is not None and offsets is not None:
            shift = self.centre_shifts(new - old, len(offsets))
            touched = self.centres[3]
            d, s = offsets[touched], shift[touched]
            restraint = 0.5 * self.stiffness * (2 * (d * s).sum(-1) + s.square().sum(-1))
            change.index_add_(0, self.bead_owner[touched], restraint)
        return change

    def centre_shifts(self, delta: torch.Tensor, n_beads: int) -> torch.Tensor:
        """(n_beads, 3) how far the bead centres move when the colour's atoms move by `delta`."""
        slot, beads, weights, _ = self.centres
        return torch.zeros(n_beads, 3, dtype=delta.dtype).index_add_(0, beads, weights[:, None] * delta[slot])


# The code of each `ForceField.terms` entry in `_term_energy`: the forms of `forms.FORMS` and 1-4 pairs.
KERNEL_FORMS = (
    "bond",
    "g96_bond",
    "pair14",
    "angle",
    "g96_angle",
    "urey_bradley",
    "proper",
    "periodic_improper",
    "improper",
    "ryckaert_bellemans",
    "fourier",
)
_BOND, _G96_BOND, _PAIR14, _ANGLE, _G96_ANGLE, _UREY_BRADLEY = range(6)  # KERNEL_FORMS' order
_PROPER, _PERIODIC_IMPROPER, _IMPROPER, _RB, _FOURIER = range(6, 11)
if set(KERNEL_FORMS) != {*FORMS, "pair14"}:  # a form added to `forms` needs its compiled copy here
    raise ImportError(f"thermal._term_energy lacks the forms {sorted({*FORMS, 'pair14'} - set(KERNEL_FORMS))}")
_CODES = {name: code for code, name in enumerate(KERNEL_FORMS)}
_MAX_PARAMS = max(3, *(len(form.columns) for form in FORMS.values()))


def _bonded_rows(
    force_field: ForceField, where: np.ndarray, x: torch.Tensor, box: torch.Tensor
) -> tuple[np.ndarray, ...]:
    """The bonded terms a colour's moves change (`where`: each atom's move, or -1; terms inside one
    group never change), for `_bonded_changes`: atoms (T, 4) padded with -1, bond image shifts
    (T, 3, 3), parameters (T, `_MAX_PARAMS`) in radians padded with 0, `_CODES` (T,) and moves (T,)."""
    parts = [
        (
            np.zeros((0, 4), np.int64),
            np.zeros((0, 3, 3)),
            np.zeros((0, _MAX_PARAMS)),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    ]
    for name, (idx, params) in force_field.terms.items():
        local = where[idx.numpy()]
        rows = (local >= 0).any(1) & ~(local == local[:, :1]).all(1)
        if not rows.any():
            continue
        idx, params = idx[torch.from_numpy(rows)], params[torch.from_numpy(rows)].numpy()
        atoms, shifts = np.full((len(idx), 4), -1), np.zeros((len(idx), 3, 3))
        padded = np.zeros((len(idx), _MAX_PARAMS))
        atoms[:, : idx.shape[1]], padded[:, : params.shape[1]] = idx.numpy(), params
        for k in range(idx.shape[1] - 1):
            shifts[:, k] = image_shifts(x[idx[:, k + 1]] - x[idx[:, k]], box).numpy()
        parts.append((atoms, shifts, padded, np.full(len(idx), _CODES[name]), local[rows].max(1)))
    return tuple(np.concatenate(column) for column in zip(*parts))


@numba.njit(inline="always")
def _dot3(a, b):  # pragma: no cover (compiled)
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@numba.njit(inline="always")
def _cross3(a, b):  # pragma: no cover (compiled)
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


@numba.njit(inline="always")
def _vector(x, slot, moved, a, b, shift):  # pragma: no cover (compiled)
    """x_b - x_a + shift, an atom of the colour (slot >= 0) where `moved` puts it."""
    pa = moved[slot[a]] if slot[a] >= 0 else x[a]
    pb = moved[slot[b]] if slot[b] >= 0 else x[b]
    return pb[0] - pa[0] + shift[0], pb[1] - pa[1] + shift[1], pb[2] - pa[2] + shift[2]


@numba.njit(inline="always", fastmath=FAST_MATH)
def _term_energy(form, b1, b2, b3, p):  # pragma: no cover (compiled)
    """Energy of one bonded term of code `form` (`KERNEL_FORMS`) from its bond vectors: the forms of
    `forms.FORMS` (parameters in radians), and 1-4 pairs (plain Lennard-Jones and scaled Coulomb,
    no cut-off)."""
    if form in (_BOND, _G96_BOND, _PAIR14):
        r2 = _dot3(b1, b1)
        if form == _PAIR14:
            inv6 = 1.0 / (r2 * r2 * r2)
            return (p[1] * inv6 - p[0]) * inv6 + p[2] / np.sqrt(r2)
        if form == _G96_BOND:
            return 0.25 * p[1] * (r2 - p[0] * p[0]) ** 2
        return 0.5 * p[1] * (np.sqrt(r2) - p[0]) ** 2
    if form in (_ANGLE, _G96_ANGLE, _UREY_BRADLEY):
        if form == _G96_ANGLE:
            cos = -_dot3(b1, b2) / np.sqrt(_dot3(b1, b1) * _dot3(b2, b2))
            return 0.5 * p[1] * (cos - np.cos(p[0])) ** 2
        normal = _cross3(b1, b2)
        energy = 0.5 * p[1] * (np.arctan2(np.sqrt(_dot3(normal, normal)), -_dot3(b1, b2)) - p[0]) ** 2
        if form == _UREY_BRADLEY:
            r13 = (b1[0] + b2[0], b1[1] + b2[1], b1[2] + b2[2])
            energy += 0.5 * p[3] * (np.sqrt(_dot3(r13, r13)) - p[2]) ** 2
        return energy
    n1, n2 = _cross3(b1, b2), _cross3(b2, b3)
    phi = np.arctan2(np.sqrt(_dot3(b2, b2)) * _dot3(b1, n2), _dot3(n1, n2))
    if form == _IMPROPER:
        d = phi - p[0]
        d -= 2 * np.pi * np.floor((d + np.pi) / (2 * np.pi))  # into [-pi, pi)
        return 0.5 * p[1] * d * d
    if form in (_PROPER, _PERIODIC_IMPROPER):
        return p[1] * (1.0 + np.cos(p[2] * phi - p[0]))
    if form in (_RB, _FOURIER):
        cos_psi, power, energy = -np.cos(phi), 1.0, p[0]
        for n in range(1, 6):
            power *= cos_psi
            energy += p[n] * power
        return energy
    raise ValueError("unknown bonded form code")


@numba.njit(cache=True, fastmath=FAST_MATH)
def _bonded_changes(x, slot, old, new, atoms, shifts, params, forms, owner, out):  # pragma: no cover (compiled)
    """out[owner[t]] += the energy of term t (`_bonded_rows`) with the colour's atoms at `new`
    minus at `old`."""
    for t in range(len(forms)):
        a, form = atoms[t], forms[t]
        size = 2 if a[2] < 0 else (3 if a[3] < 0 else 4)
        for state in range(2):
            moved = new if state == 0 else old
            b1 = _vector(x, slot, moved, a[0], a[1], shifts[t, 0])
            b2 = _vector(x, slot, moved, a[1], a[2], shifts[t, 1]) if size > 2 else b1
            b3 = _vector(x, slot, moved, a[2], a[3], shifts[t, 2]) if size > 3 else b1
            energy = _term_energy(form, b1, b2, b3, params[t])
            out[owner[t]] += energy if state == 0 else -energy


@numba.njit(inline="always", fastmath=FAST_MATH)
def _unit(v):  # pragma: no cover (compiled)
    length = max(np.sqrt(_dot3(v, v)), 1e-12)
    return v[0] / length, v[1] / length, v[2] / length


@numba.njit(cache=True, fastmath=FAST_MATH)
def _mark_inverting(x, slot, new, atoms, shifts, signs, owner, min_volume, out):  # pragma: no cover (compiled)
    """out[owner[c]] = inf where the colour's atoms at `new` put chiral centre c (atoms [centre,
    a, b, d], `stereo.signed_volume` of sign signs[c]) in its mirror image or flat."""
    for c in range(len(signs)):
        a = atoms[c]
        v1 = _unit(_vector(x, slot, new, a[0], a[1], shifts[c, 0]))
        v2 = _unit(_vector(x, slot, new, a[0], a[2], shifts[c, 1]))
        v3 = _unit(_vector(x, slot, new, a[0], a[3], shifts[c, 2]))
        if _dot3(v1, _cross3(v2, v3)) * signs[c] < min_volume:
            out[owner[c]] = np.inf


def _pair_coefficients(force_field: ForceField, i: np.ndarray, j: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """(P, 5) the coefficients of `_pair_energy` for pairs (i, j): the force field's shifted
    Lennard-Jones and reaction-field Coulomb, or for `excluded` pairs only the reaction-field
    correction f q_i q_j (k_rf r^2 - c_rf)."""
    c6, c12, qq, lj_shift = (p.numpy() for p in force_field.pair_parameters(torch.from_numpy(i), torch.from_numpy(j)))
    kept = ~excluded
    return np.column_stack(
        [c12 * kept, c6 * kept, qq * kept, qq * force_field.k_rf, lj_shift * kept + qq * force_field.c_rf]
    ).astype(np.float32)


# FAST_MATH: an overlap still gives an infinite energy and is refused; 3x faster than strict IEEE
# order, same sums to 1e-13.


@numba.njit(inline="always", fastmath=FAST_MATH)
def _pair_energy(dx: float, dy: float, dz: float, c: np.ndarray, cutoff2: float) -> float:
    """c12 / r^12 - c6 / r^6 + f q_i q_j / r + f q_i q_j k_rf r^2 - constant within the cut-off (kJ/mol)."""
    r2 = dx * dx + dy * dy + dz * dz
    inv2 = 1.0 / r2
    inv6 = inv2 * inv2 * inv2
    energy = (c[0] * inv6 - c[1]) * inv6 + c[2] * np.sqrt(inv2) + c[3] * r2 - c[4]
    return energy if r2 < cutoff2 else 0.0  # a select, not a branch: the loop vectorises


@numba.njit(parallel=True, cache=True, fastmath=FAST_MATH)
def _pair_changes(x, old, new, other, images, box, starts, coefficients, cutoff2):  # pragma: no cover (compiled)
    """(m,) how much the pair energy of each moved atom changes from `old` to `new` (m, 3): its rows
    starts[a]:starts[a + 1] list the `other` atoms and their periodic `images` (box vectors to add).
    A compiled loop: on 2 CPU cores about 15 times faster than the same sums in torch, which spend
    their time gathering millions of rows into temporaries."""
    out = np.zeros(len(old))
    for a in numba.prange(len(old)):
        total = 0.0
        for r in range(starts[a], starts[a + 1]):
            o, i, j, k = other[r], images[r, 0], images[r, 1], images[r, 2]
            px = x[o, 0] + i * box[0, 0] + j * box[1, 0] + k * box[2, 0]
            py = x[o, 1] + i * box[0, 1] + j * box[1, 1] + k * box[2, 1]
            pz = x[o, 2] + i * box[0, 2] + j * box[1, 2] + k * box[2, 2]
            total += _pair_energy(
                px - new[a, 0], py - new[a, 1], pz - new[a, 2], coefficients[r], cutoff2
            ) - _pair_energy(px - old[a, 0], py - old[a, 1], pz - old[a, 2], coefficients[r], cutoff2)
        out[a] = total
    return out


def centre_offsets(centres: CentreMembers, x: torch.Tensor, box: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
    """(M, 3) nm each bead's centre in `x` minus its CG position `cg`, minimum image."""
    atoms, beads = torch.from_numpy(centres.atoms), torch.from_numpy(centres.beads)
    d = minimum_image(x[atoms] - cg[beads], box)
    return torch.zeros_like(cg).index_add_(0, beads, torch.from_numpy(centres.weights)[:, None] * d)


def turn(vectors: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """`vectors` (n, 3) turned by rotation vectors (n, 3) (axis times angle in radians)."""
    angle = rotation.norm(dim=-1, keepdim=True)
    axis = rotation / angle.clamp(min=1e-12)
    cos, sin = torch.cos(angle), torch.sin(angle)
    along = axis * (axis * vectors).sum(-1, keepdim=True)
    return vectors * cos + torch.cross(axis, vectors, dim=-1) * sin + along * (1 - cos)


def _rotations(
    energy: _ColourEnergy, x: torch.Tensor, steps: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, 3) random rotation vectors: crankshafts and rotors about their axes, the rest about any axis; the
    proposal is symmetric (a turn and its inverse are equally likely)."""
    pivot, second, shift = energy.axes
    step = steps[energy.kinds][:, None]
    free = torch.randn((energy.size, 3), generator=generator, dtype=torch.float64) * step
    axis = x[second.clamp(min=0)] - x[pivot] + shift
    angle = torch.randn((energy.size, 1), generator=generator, dtype=torch.float64) * step
    along = angle * axis / axis.norm(dim=-1, keepdim=True)
    return torch.where((second >= 0)[:, None], along, free)


def _propose(
    energy: _ColourEnergy, x: torch.Tensor, steps: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour's atoms where they stand and turned by `_rotations` (each group keeps its image)."""
    rotation = _rotations(energy, x, steps, generator)
    old = x[energy.members]
    arm = old - x[energy.member_pivots] + energy.arm_shifts
    return old, old + turn(arm, rotation[energy.owner]) - arm


def thermalise(
    positions: np.ndarray | torch.Tensor,
    box: np.ndarray,
    moves: ThermalMoves,
    temperature: float,
    sweeps: int = DEFAULTS.thermal_sweeps,
    generator: torch.Generator | None = None,
    cg: np.ndarray | None = None,
    centre_spread: float = DEFAULTS.centre_spread,
) -> np.ndarray:
    """Positions (N, 3) nm after `sweeps` Metropolis sweeps of `moves` at `temperature` (K). With
    `cg` (M, 3) nm and moves that know the mapping, bead centres are restrained to it with a
    thermal spread of `centre_spread` nm. Every random draw comes from `generator`."""
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64)).clone()
    if not len(moves.kinds) or sweeps < 1:
        return x.numpy()
    box_np = np.asarray(box, dtype=np.float64)
    box_t = torch.as_tensor(box_np)
    match_torch_threads()
    beta = 1.0 / (BOLTZMANN * temperature)
    restrained = moves.centres is not None and cg is not None
    stiffness = BOLTZMANN * temperature / centre_spread**2 if restrained else 0.0
    pairs = _PairList.build(x.numpy(), box_np, moves)
    colours = _colours(moves, pairs.close(x.numpy(), COUPLING_RANGE), len(x))
    energies = [_ColourEnergy(moves, c, x, box_t, pairs, stiffness) for c in colours]
    cg_t = torch.as_tensor(np.asarray(cg, dtype=np.float64)) if restrained else None
    steps = torch.tensor([INITIAL_STEP[k] for k in KINDS], dtype=torch.float64)
    tried = torch.bincount(torch.from_numpy(moves.kinds), minlength=len(KINDS)).double()
    for sweep in range(sweeps):
        accepted = torch.zeros(len(KINDS), dtype=torch.float64)
        offsets = centre_offsets(moves.centres, x, box_t, cg_t) if restrained else None
        for energy in energies:
            old, new = _propose(energy, x, steps, generator)
            change = energy.change(new, old, x, offsets)
            accept = torch.rand(energy.size, generator=generator, dtype=torch.float64) < torch.exp(-beta * change)
            taken = accept[energy.owner][:, None]
            x[energy.members] = torch.where(taken, new, old)
            if offsets is not None and energy.centres is not None:
                offsets += energy.centre_shifts(torch.where(taken, new - old, 0.0), len(offsets))
            accepted.index_add_(0, energy.kinds, accept.double())
        if sweep < sweeps // 2:
            steps *= torch.exp(torch.where(tried > 0, accepted / tried.clamp(min=1) - TARGET_ACCEPTANCE, 0.0))
    return x.numpy()
