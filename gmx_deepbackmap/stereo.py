"""Stereochemistry: the handedness of chiral centres, learned from the training structures and
kept by the sampler (syndiotactic polystyrene stays syndiotactic).

A GROMACS topology says which atoms are bonded, not on which side of a centre they sit: the bond,
angle and LJ terms of a tetrahedral carbon are the same for both mirror images, so the energy that
ranks the sampler's candidates cannot tell them apart. The handedness comes from the training
structures instead: a centre whose sign agrees in (nearly) every molecule of its type in every
training frame is recorded in the model file, and the sampler prefers candidates that keep it.
A centre's handedness is the sign of the signed volume (a-c).((b-c)x(d-c)) of its heavy
neighbours a < b < d (atom index order) around the centre c; with the three bond vectors of unit
length the volume is about 0.77 at an ideal tetrahedron and 0 at a flat centre.

The sampler judges a centre as soon as one of its atoms is placed: neighbours not yet placed stand
at their owner bead (where the sampler keeps unplaced atoms). In the forward pass a side group's
handedness is decided when the group is placed, before the next backbone bead exists; checking
only complete centres left half of the sPS centres inverted after the forward pass. A centre the
sampler still ends with inverted is reflected through the plane of its heavy neighbours
(`StereoCheck.mirror_inverted`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .environment import SystemPlan
from .pbc import minimum_image
from .prior import terms_of_steps
from .topology import Topology, branch_classes

AGREEMENT = 0.98  # fraction of training molecules x frames that must share a centre's sign
# Unit-vector signed volume below which the sampler counts a centre as not in its recorded
# handedness: flat centres, which a small move (the final bond projection) can invert, count as
# inverted. Never reached in the sPS reference (every 4th frame of t568 and t313: smallest 0.34, mean 0.69).
MIN_VOLUME = 0.25
MAX_LIFT = 0.05  # nm: the farthest `StereoCheck.mirror_inverted` moves a flat centre off its neighbours' plane
LIFT_BISECTIONS = 30


def _bond_ends(topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every chemical bond (bonds and constraints): (from, to), sorted by from, then to."""
    bonds = np.concatenate([b.indices for b in (topology.bonds, topology.constraints)]).reshape(-1, 2)
    directed = np.unique(np.concatenate([bonds, bonds[:, ::-1]]), axis=0)
    return directed[:, 0], directed[:, 1]


def chiral_centres(topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Carbons with four bonds, three to heavy atoms and one to hydrogen, no two of them heading
    equivalent branches: the centres (C,) and their heavy neighbours (C, 3) in atom index order.
    (Cumene's isopropyl CH, with its two methyls, is no centre; sPS's backbone CH, between two
    chain directions that end differently, is.)"""
    centre, other = _bond_ends(topology)
    degree = np.bincount(centre, minlength=topology.n_atoms)
    heavy = topology.elements[other] != "H"
    n_heavy = np.bincount(centre, weights=heavy, minlength=topology.n_atoms)
    is_centre = (topology.elements == "C") & (degree == 4) & (n_heavy == 3) & ~equivalent_branches(topology)
    keep = is_centre[centre] & heavy
    return np.flatnonzero(is_centre), other[keep].reshape(-1, 3)


def equivalent_branches(topology: Topology) -> np.ndarray:
    """(N,) whether two of an atom's bonded neighbours head topologically equivalent branches
    (`topology.branch_classes` on its molecule's bond graph, with element labels): such an atom
    has no handedness, whatever its training structures show."""
    out = np.zeros(topology.n_atoms, dtype=bool)
    for name, mtype in topology.molecule_types.items():
        starts = np.array([start for mol, start in topology.molecules if mol == name], dtype=np.int64)
        if not len(starts):
            continue
        directed, classes = branch_classes(mtype.bonds, topology.elements[starts[0] : starts[0] + mtype.n_atoms])
        branches = np.bincount(directed[:, 0], minlength=mtype.n_atoms)
        distinct = np.bincount(np.unique(np.stack([directed[:, 0], classes], 1), axis=0)[:, 0], minlength=mtype.n_atoms)
        out[(starts[:, None] + np.arange(mtype.n_atoms)).ravel()] = np.tile(distinct < branches, len(starts))
    return out


def centre_hydrogens(topology: Topology, centres: np.ndarray) -> np.ndarray:
    """(C,) the hydrogen bonded to each of the `centres` (as `chiral_centres` finds them: one each)."""
    centre, other = _bond_ends(topology)
    hydrogen = np.full(topology.n_atoms, -1, dtype=np.int64)
    is_h = topology.elements[other] == "H"
    hydrogen[centre[is_h]] = other[is_h]
    return hydrogen[np.asarray(centres, dtype=np.int64)]


def signed_volume(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """a.(b x d) of the unit vectors along a, b, d (..., 3), from a centre to its neighbours: its
    sign is the handedness, its size how far the centre is from flat."""
    a, b, d = (v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12) for v in (a, b, d))
    return (a * torch.linalg.cross(b, d)).sum(-1)


def handedness(positions: torch.Tensor, box: torch.Tensor, centres: np.ndarray, neighbours: np.ndarray) -> torch.Tensor:
    """Signs (C,) of the centres in one frame (minimum image: molecules may be broken)."""
    a, b, d = (minimum_image(positions[neighbours[:, k]] - positions[centres], box) for k in range(3))
    return torch.sign(signed_volume(a, b, d))


def learn_stereo(topology: Topology, frames: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict]:
    """Per molecule type, the chiral centres whose sign agrees across the training frames
    (positions (N, 3) nm, box (3, 3) nm each): `{"atoms": [[c, a, b, d], ...], "signs": [...]}` in
    atom indices within the molecule. Centres of mixed handedness (atactic) are left free."""
    centres, neighbours = chiral_centres(topology)
    signs = torch.stack([handedness(x, box, centres, neighbours) for x, box in frames]).cpu().numpy()
    names = np.array([name for name, _ in topology.molecules])
    starts = np.array([start for _, start in topology.molecules])
    molecule = topology.molecule_index[centres]
    local = centres - starts[molecule]
    out = {}
    for name in dict.fromkeys(n for n, _ in topology.molecules):  # str keys: model files hold plain data
        of_type = names[molecule] == name
        atoms, kept = [], []
        for c in np.unique(local[of_type]):
            sel = of_type & (local == c)
            mean = signs[:, sel].mean()
            if abs(mean) >= 2 * AGREEMENT - 1:
                first = np.flatnonzero(sel)[0]
                atoms.append([int(c), *(int(a) for a in neighbours[first] - starts[molecule[first]])])
                kept.append(1 if mean > 0 else -1)
        if atoms:
            out[name] = {"atoms": atoms, "signs": kept}
    return out


def system_stereo(topology: Topology, stereo: dict[str, dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded centres of every molecule of the system that are centres (`chiral_centres`: a
    model file made before centres needed distinct branches may record cumene's CH): atoms (C, 4)
    [centre, a, b, d], signs (C,) and the centres' hydrogens (C,)."""
    atoms, signs = [np.zeros((0, 4), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for name, start in topology.molecules:
        if name in stereo:
            atoms.append(np.asarray(stereo[name]["atoms"], dtype=np.int64) + start)
            signs.append(np.asarray(stereo[name]["signs"], dtype=np.int64))
    atoms, signs = np.concatenate(atoms), np.concatenate(signs)
    keep = np.isin(atoms[:, 0], chiral_centres(topology)[0])
    return atoms[keep], signs[keep], centre_hydrogens(topology, atoms[keep, 0])


class StereoCheck:
    """The recorded chiral centres of a system, checked against candidate placements of steps."""

    def __init__(self, plan: SystemPlan, atoms: np.ndarray, signs: np.ndarray, hydrogens: np.ndarray | None = None):
        """`atoms` (C, 4) [centre, a, b, d], `signs` (C,) and the centres' `hydrogens` (C,) (-1 or
        None: none) as from `system_stereo`."""
        self.atoms = torch.as_tensor(atoms, dtype=torch.int64)
        self.signs = torch.as_tensor(signs, dtype=torch.float64)
        self.hydrogens = torch.as_tensor(
            np.full(len(self.atoms), -1) if hydrogens is None else hydrogens, dtype=torch.int64
        )
        self.of_step = terms_of_steps(plan, np.asarray(atoms, dtype=np.int64).reshape(-1, 4))

    def mirror_inverted(self, positions: torch.Tensor, box: torch.Tensor) -> np.ndarray:
        """Put every centre that is in the mirror image of its recorded handedness, or (nearly) flat
        (`MIN_VOLUME`), back in it with its hydrogen (in place in `positions` (N, 3)); returns the
        atoms (M, 4) [centre, a, b, d] of the centres moved. An inverted centre is reflected through
        the plane of its heavy neighbours, which keeps its bond lengths and angles; one still flat
        then moves off that plane until its volume is `MIN_VOLUME` (sPS: about 0.015 nm, its bonds
        0.001 nm longer), so that rounding (0.001 nm in .xtc files) cannot invert it. The
        side groups and hydrogens around it no longer fit (see `sampling.schedules.mirror_schedule`)."""
        if not len(self.atoms):
            return np.zeros((0, 4), dtype=np.int64)
        box = box.to(positions)
        p = positions[self.atoms]
        v = minimum_image(p[:, 1:] - p[:, :1], box)  # (C, 3, 3) centre -> neighbours
        sign = self.signs.to(v)
        bad = signed_volume(v[:, 0], v[:, 1], v[:, 2]) * sign < MIN_VOLUME
        if not bool(bad.any()):
            return np.zeros((0, 4), dtype=np.int64)
        v, sign, centres, hydrogens = v[bad], sign[bad, None], self.atoms[bad, 0], self.hydrogens[bad]

        def recorded(move: torch.Tensor | float = 0.0) -> torch.Tensor:
            """(M, 1) volume in the recorded sense with each centre moved by `move` (M, 3)."""
            moved = v - (move[:, None] if torch.is_tensor(move) else move)
            return signed_volume(moved[:, 0], moved[:, 1], moved[:, 2])[:, None] * sign

        normal = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        inverted = recorded() < 0
        reflect = torch.where(inverted, 2 * (v[:, 0] * normal).sum(-1, keepdim=True), 0.0) * normal
        up = torch.where(recorded(reflect + 1e-4 * normal) > recorded(reflect - 1e-4 * normal), normal, -normal)
        low, high = torch.zeros_like(sign), torch.full_like(sign, MAX_LIFT)
        for _ in range(LIFT_BISECTIONS):
            mid = (low + high) / 2
            enough = recorded(reflect + mid * up) >= MIN_VOLUME
            low, high = torch.where(enough, low, mid), torch.where(enough, mid, high)
        lift = torch.where(recorded(reflect) >= MIN_VOLUME, 0.0, high) * up
        has_h = hydrogens >= 0
        to_h = minimum_image(positions[hydrogens[has_h]] - positions[centres[has_h]], box)
        h_height = ((to_h - v[has_h, 0]) * normal[has_h]).sum(-1, keepdim=True)
        h_mirror = torch.where(inverted[has_h], 2 * h_height, 0.0) * normal[has_h]
        positions[hydrogens[has_h]] += lift[has_h] - h_mirror
        positions[centres] += reflect + lift
        return self.atoms[bad].numpy()

    def inverted(
        self,
        steps: torch.Tensor,
        sequence_atoms: torch.Tensor,
        sequence: torch.Tensor,
        positions: torch.Tensor,
        box: torch.Tensor,
    ) -> torch.Tensor:
        """Number (B,) of centres touched by each item's step (B,) that its sequence atoms (B, L),
        at box-frame positions `sequence` (B, L, 3), put in the mirror image or (nearly) flat
        (`MIN_VOLUME`); every other atom at `positions` (N, 3), unplaced ones at their bead."""
        if not len(self.atoms):
            return torch.zeros(len(steps), dtype=torch.int64)
        rows = self.of_step[steps]
        atoms = self.atoms[rows.clamp(min=0)]  # (B, T, 4)
        match = atoms[..., None] == sequence_atoms[:, None, None, :]  # (B, T, 4, L)
        slot = match.to(torch.int8).argmax(-1)
        candidate = sequence[torch.arange(len(sequence))[:, None, None], slot]
        p = torch.where(match.any(-1)[..., None], candidate, positions[atoms].to(sequence))
        v = minimum_image(p[..., 1:, :] - p[..., :1, :], box.to(sequence))
        volume = signed_volume(v[..., 0, :], v[..., 1, :], v[..., 2, :]) * self.signs[rows.clamp(min=0)].to(v)
        return ((rows >= 0) & (volume < MIN_VOLUME)).sum(-1)
