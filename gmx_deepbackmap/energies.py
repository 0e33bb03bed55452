"""The one force field of the package: GROMACS energies of a topology in PyTorch.

`ForceField` evaluates per-term energies of batches of coordinates, differentiably, on CPU or
CUDA, in float32 or float64. It serves the training prior and the sampler (many small local
evaluations through `ForceField.subset`) and `gmx-dbm energy` (whole frames).

The functional forms are those of `gmx mdrun` with the Verlet cut-off scheme:

- bonded terms (bonds, angles funct 1, proper dihedrals funct 1/9, harmonic impropers funct 2,
  periodic impropers funct 4, `[ pairs ]`) use minimum-image displacements, so molecules may be
  broken across the box; dihedrals follow the IUPAC sign convention (trans = 180 degrees);
- Lennard-Jones within the cut-off, shifted to zero at the cut-off (`potential-shift`);
- reaction-field Coulomb, `f q_i q_j (1/r + k_rf r^2 - c_rf)` within the cut-off. Like the Verlet
  scheme, every *excluded* pair within the cut-off contributes `f q_i q_j (k_rf r^2 - c_rf)` and
  every atom a constant self term `-0.5 f c_rf q_i^2`. Checked against `gmx mdrun -rerun`
  (GROMACS 2022) on the sPS frames: "Coulomb (SR)" matches to 0.01 kJ/mol with both
  corrections; without either it is off by 2.5 kJ/mol, with only one by about 4,100 kJ/mol.

Units: nm, kJ/mol, e; angle parameters are read in degrees and used in radians.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .pbc import minimum_image, neighbour_pairs
from .topology import Topology, read_topology

ONE_4PI_EPS0 = 138.935458  # kJ mol^-1 nm e^-2, GROMACS' electric conversion factor
TERMS = ("bond", "angle", "proper", "improper", "periodic_improper", "lj", "coulomb", "lj14", "coulomb14")
GMX_TERM_NAMES = {
    "bond": "Bond",
    "angle": "Angle",
    "proper": "Proper Dih.",
    "improper": "Improper Dih.",
    "periodic_improper": "Per. Imp. Dih.",
    "lj": "LJ (SR)",
    "coulomb": "Coulomb (SR)",
    "lj14": "LJ-14",
    "coulomb14": "Coulomb-14",
}
LJ_MODIFIERS = ("potential-shift", "none")
_BONDED = {  # term -> (topology attribute, parameter columns given in degrees)
    "bond": ("bonds", ()),
    "angle": ("angles", (0,)),
    "proper": ("propers", (0,)),
    "improper": ("impropers", (0,)),
    "periodic_improper": ("periodic_impropers", (0,)),
    "pair14": ("pairs", ()),
}
_NEIGHBOUR_SKIN = 1e-3  # nm: the grid search runs in float32; the exact cut-off is applied after it


class ForceField:
    """Energies of a GROMACS topology, or of a local subset of it (see `subset`).

    Call `energies(x, box)` with x (B, N, 3) or (N, 3) in nm and box rows (3, 3) or (B, 3, 3)
    in nm; the result maps every name of `TERMS` to a tensor (B,) (or a scalar) in kJ/mol.
    The potential energy is the sum of the terms.
    """

    def __init__(
        self,
        topology: Topology,
        cutoff: float = 1.0,
        epsilon_rf: float = 2.5,
        epsilon_r: float = 1.0,
        lj_modifier: str = "potential-shift",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        if lj_modifier not in LJ_MODIFIERS:
            raise ValueError(f"lj_modifier '{lj_modifier}' (expected one of {', '.join(LJ_MODIFIERS)})")
        self.dtype, self.device = dtype, torch.device(device)
        self.n_atoms = topology.n_atoms
        self.cutoff = float(cutoff)
        # epsilon_rf = 0 means infinity in GROMACS (conducting boundary)
        k_rf = 1 / (2 * cutoff**3) if epsilon_rf == 0 else (
            (epsilon_rf - epsilon_r) / ((2 * epsilon_rf + epsilon_r) * cutoff**3))
        self.k_rf, self.c_rf = k_rf, 1 / cutoff + k_rf * cutoff**2
        self.f_elec = ONE_4PI_EPS0 / epsilon_r
        self.lj_shift = lj_modifier == "potential-shift"

        self.terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, (attribute, degree_columns) in _BONDED.items():
            terms = getattr(topology, attribute)
            params = terms.params.copy()
            params[:, list(degree_columns)] = np.radians(params[:, list(degree_columns)])
            if name == "pair14":  # append the scaled charge product for Coulomb-14
                i, j = terms.indices.T
                qq = topology.fudge_qq * self.f_elec * topology.charges[i] * topology.charges[j]
                params = np.column_stack([params, qq])
            self.terms[name] = (self._long(terms.indices), self._real(params))
        self.charges = self._real(topology.charges)
        self.type_index = self._long(topology.type_index)
        self.c6, self.c12 = self._real(topology.c6), self._real(topology.c12)
        self.exclusions = self._long(topology.exclusions)
        self._exclusion_keys = np.sort(topology.exclusions[:, 0] * self.n_atoms + topology.exclusions[:, 1])
        self.self_energy = -0.5 * self.f_elec * self.c_rf * float(np.square(topology.charges).sum())
        self.local_pairs: tuple[torch.Tensor, ...] | None = None  # fixed pair list of a subset

    def _real(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device).to(self.dtype)

    def _long(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.int64), device=self.device)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ForceField:
        """A copy on another device and/or with another floating-point precision."""
        other = copy.copy(self)
        other.device = torch.device(device) if device is not None else self.device
        other.dtype = dtype or self.dtype

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(other.device, other.dtype if value.is_floating_point() else None)
            if isinstance(value, tuple):
                return tuple(move(v) for v in value)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        for name, value in vars(self).items():
            setattr(other, name, move(value))
        return other

    # ------------------------------------------------------------------ local environments

    def subset(self, atoms, active=None) -> ForceField:
        """A force field of the atoms `atoms` (global indices, in the order of the local coordinates)
        with every term that involves at least one `active` atom (default: all of `atoms`).

        Built once per environment, then evaluated on local coordinates (B, len(atoms), 3): bonded
        terms entirely inside `atoms`, non-bonded pairs between active atoms and all of `atoms`
        (a dense active x atoms block with precomputed parameters; no neighbour search, the
        cut-off is applied per evaluation), RF corrections of excluded pairs and self terms of
        active atoms. If `atoms` holds every atom within the cut-off of the active ones and their
        bonded partners, the subset's potential changes exactly as the whole system's when only
        active atoms move.

        Speed: with `box=None` no periodic images are searched (about half the cost). That is
        exact for coordinates made whole around a centre c (`c + minimum_image(x - c, box)`) when
        every local atom lies within `box_widths(box).min() - cutoff` of c.
        """
        if self.local_pairs is not None:
            raise ValueError("subset of a subset: take subsets of the whole-system force field")
        atoms = np.asarray(atoms, dtype=np.int64).reshape(-1)
        local = np.full(self.n_atoms, -1, dtype=np.int64)
        local[atoms] = np.arange(len(atoms))
        is_active = np.zeros(self.n_atoms, dtype=bool)
        is_active[atoms if active is None else np.asarray(active, dtype=np.int64).reshape(-1)] = True
        if (local[is_active] < 0).any():
            raise ValueError("active atoms must be part of atoms")

        def keep(indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            idx = indices.cpu().numpy()
            rows = (local[idx] >= 0).all(1) & is_active[idx].any(1)
            return rows, local[idx[rows]]

        other = copy.copy(self)
        other.terms = {}
        for name, (indices, params) in self.terms.items():
            rows, idx = keep(indices)
            other.terms[name] = (self._long(idx), params[torch.as_tensor(rows, device=self.device)])
        other.exclusions = self._long(keep(self.exclusions)[1])
        charges = self.charges.cpu().numpy().astype(np.float64)
        other.n_atoms = len(atoms)
        other.charges = self.charges[self._long(atoms)]
        other.type_index = self.type_index[self._long(atoms)]
        other.self_energy = -0.5 * self.f_elec * self.c_rf * float(np.square(charges[is_active]).sum())
        other._exclusion_keys = None
        other.local_pairs = self._subset_pairs(atoms, is_active)
        return other

    def _subset_pairs(self, atoms: np.ndarray, is_active: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The dense block of pairs (active atom a, local atom j): local indices of the active
        atoms, an (A, n) padding added to r^2 that moves self, duplicate (active-active counted
        once) and excluded pairs beyond the cut-off, and (A, n) pair parameters."""
        first = np.flatnonzero(is_active[atoms])
        gi, gj = atoms[first][:, None], atoms[None, :]
        keys = np.minimum(gi, gj) * self.n_atoms + np.maximum(gi, gj)
        drop = (is_active[gj] & (gj <= gi)) | _contains(self._exclusion_keys, keys)
        pad = self._real(np.where(drop, 4 * self.cutoff**2, 0.0))
        gi, gj = np.broadcast_arrays(gi, gj)
        return self._long(first), pad, *self._pair_parameters(self._long(gi), self._long(gj))

    def _pair_parameters(self, i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c6, c12, f q_i q_j and the LJ value at the cut-off (the potential shift) of pairs."""
        ti, tj = self.type_index[i], self.type_index[j]
        c6, c12 = self.c6[ti, tj], self.c12[ti, tj]
        rc6 = self.cutoff**-6 if self.lj_shift else 0.0
        return c6, c12, self.f_elec * self.charges[i] * self.charges[j], (c12 * rc6 - c6) * rc6

    # ------------------------------------------------------------------ evaluation

    def energies(self, x, box=None) -> dict[str, torch.Tensor]:
        """Per-term energies (kJ/mol) of coordinates x (B, N, 3) or (N, 3) in nm.

        `box` (3, 3) or (B, 3, 3), rows are box vectors in nm; required for a whole system
        (neighbour search), optional for a subset (None: no periodic images).
        """
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        batched = x.dim() == 3
        x = x if batched else x[None]
        if x.shape[1] != self.n_atoms:
            raise ValueError(f"coordinates of {x.shape[1]} atoms, the force field has {self.n_atoms}")
        if box is not None:
            box = torch.as_tensor(box, dtype=self.dtype, device=self.device)
        elif self.local_pairs is None:
            raise ValueError("a whole-system evaluation needs the box")
        out = self._bonded(x, box)
        out["lj"], out["coulomb"] = self._nonbonded(x, box)
        out["coulomb"] = out["coulomb"] + self._excluded_rf(x, box) + self.self_energy
        return out if batched else {k: v[0] for k, v in out.items()}

    def _bonded(self, x: torch.Tensor, box) -> dict[str, torch.Tensor]:
        bond_idx, bond = self.terms["bond"]
        r = _square(_displacement(x, bond_idx[:, 0], bond_idx[:, 1], box)).sqrt()
        out = {"bond": (0.5 * bond[:, 1] * (r - bond[:, 0]).square()).sum(-1)}

        angle_idx, angle = self.terms["angle"]
        theta = _angle(x, angle_idx, box)
        out["angle"] = (0.5 * angle[:, 1] * (theta - angle[:, 0]).square()).sum(-1)

        for name in ("proper", "periodic_improper"):
            idx, p = self.terms[name]
            phi = _dihedral(x, idx, box)
            out[name] = (p[:, 1] * (1 + torch.cos(p[:, 2] * phi - p[:, 0]))).sum(-1)

        idx, p = self.terms["improper"]
        dxi = _dihedral(x, idx, box) - p[:, 0]
        dxi = dxi - 2 * math.pi * torch.floor((dxi + math.pi) / (2 * math.pi))  # into [-pi, pi)
        out["improper"] = (0.5 * p[:, 1] * dxi.square()).sum(-1)

        idx, p = self.terms["pair14"]
        r2 = _square(_displacement(x, idx[:, 0], idx[:, 1], box))
        inv6 = r2.reciprocal() ** 3
        out["lj14"] = (p[:, 1] * inv6 * inv6 - p[:, 0] * inv6).sum(-1)
        out["coulomb14"] = (p[:, 2] * r2.rsqrt()).sum(-1)
        return out

    def _nonbonded(self, x: torch.Tensor, box) -> tuple[torch.Tensor, torch.Tensor]:
        """LJ and reaction-field Coulomb of non-excluded pairs within the cut-off."""
        if self.local_pairs is not None:
            active, pad, *params = self.local_pairs
            d = x[:, None] - x.index_select(1, active)[:, :, None]  # (B, A, n, 3)
            return self._pair_energies(_square(_minimum_image(d, box)) + pad, *params)
        lj, coulomb = [], []
        for b in range(len(x)):
            i, j, shifts = self._neighbours(x[b], box if box.dim() == 2 else box[b])
            r2 = _square(x[b, j] - x[b, i] + shifts)
            energies = self._pair_energies(r2[None], *self._pair_parameters(i, j))
            lj.append(energies[0])
            coulomb.append(energies[1])
        return torch.cat(lj), torch.cat(coulomb)

    def _neighbours(self, x: torch.Tensor, box: torch.Tensor):
        """Non-excluded pairs (i, j) within the cut-off of one frame and their periodic shifts."""
        pairs, shifts = neighbour_pairs(
            x.detach().cpu().double().numpy(), box.detach().cpu().double().numpy(),
            self.cutoff + _NEIGHBOUR_SKIN)
        keep = ~_contains(self._exclusion_keys, pairs[:, 0] * self.n_atoms + pairs[:, 1])
        pairs = self._long(pairs[keep])
        return pairs[:, 0], pairs[:, 1], self._real(shifts[keep])

    def _pair_energies(self, r2, c6, c12, qq, lj_shift) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed LJ and RF Coulomb of pairs at squared distances r2; pairs beyond the cut-off
        count zero (their values stay finite, so gradients do too)."""
        inside = r2 < self.cutoff**2
        inv6 = r2.reciprocal() ** 3
        lj = (c12 * inv6 - c6) * inv6 - lj_shift
        coulomb = qq * (r2.rsqrt() + self.k_rf * r2 - self.c_rf)
        zero = torch.zeros((), dtype=r2.dtype, device=r2.device)
        return (torch.where(inside, lj, zero).flatten(1).sum(-1),
                torch.where(inside, coulomb, zero).flatten(1).sum(-1))

    def _excluded_rf(self, x: torch.Tensor, box) -> torch.Tensor:
        """Reaction-field correction of excluded pairs within the cut-off (Verlet scheme)."""
        i, j = self.exclusions[:, 0], self.exclusions[:, 1]
        r2 = _square(_displacement(x, i, j, box))
        qq = self.f_elec * self.charges[i] * self.charges[j]
        energy = qq * (self.k_rf * r2 - self.c_rf)
        return torch.where(r2 < self.cutoff**2, energy, torch.zeros_like(energy)).sum(-1)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which keys occur in an ascending array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scalar products over the last axis (3); far faster than `(a * b).sum(-1)` on CPU."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _square(d: torch.Tensor) -> torch.Tensor:
    """Squared lengths over the last axis (3)."""
    return _dot(d, d)


def _displacement(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, box) -> torch.Tensor:
    """x_j - x_i (B, n, 3), as the minimum image when a box is given."""
    return _minimum_image(x.index_select(1, j) - x.index_select(1, i), box)


def _minimum_image(d: torch.Tensor, box) -> torch.Tensor:
    """Minimum images of displacements d (B, ..., 3) in box (3, 3) or (B, 3, 3); box None: as is."""
    if box is None:
        return d
    if box.dim() == 3:  # one box per batch element, broadcast over the other dimensions
        box = box.view(len(box), *[1] * (d.dim() - 2), 3, 3)
    return minimum_image(d, box)


def _angle(x: torch.Tensor, idx: torch.Tensor, box) -> torch.Tensor:
    """Angle i-j-k in radians (atan2 form: accurate and differentiable near 0 and pi)."""
    a = _displacement(x, idx[:, 1], idx[:, 0], box)
    b = _displacement(x, idx[:, 1], idx[:, 2], box)
    return torch.atan2(_square(torch.linalg.cross(a, b)).sqrt(), _dot(a, b))


def _dihedral(x: torch.Tensor, idx: torch.Tensor, box) -> torch.Tensor:
    """Dihedral i-j-k-l in radians, IUPAC/GROMACS sign convention (cis 0, trans pi)."""
    b1 = _displacement(x, idx[:, 0], idx[:, 1], box)
    b2 = _displacement(x, idx[:, 1], idx[:, 2], box)
    b3 = _displacement(x, idx[:, 2], idx[:, 3], box)
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    return torch.atan2(_square(b2).sqrt() * _dot(b1, n2), _dot(n1, n2))


# ---------------------------------------------------------------------- whole frames (gmx-dbm energy)


def frame_energies(
    structure: str | os.PathLike,
    topology: Topology | str | os.PathLike,
    trajectory: str | os.PathLike | None = None,
    frames: slice = slice(None),
    device: str = "cpu",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Per-frame energies of a structure or trajectory: one dict per frame with `frame`, `time`
    (ps) and every term of `TERMS` (kJ/mol)."""
    from tqdm import tqdm

    from .structure import check_atom_count, iter_frames, load_universe

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available")
    top = topology if isinstance(topology, Topology) else read_topology(topology)
    universe = load_universe(structure, trajectory)
    check_atom_count(universe, top.n_atoms, structure, f"topology {top.path}")
    force_field = ForceField(top, device=device)
    rows = []
    with torch.no_grad():
        selected = range(len(universe.trajectory))[frames]
        for frame in tqdm(iter_frames(universe, frames), total=len(selected), unit="frame",
                          desc="energy", disable=not progress):
            energies = force_field.energies(frame.positions, frame.box)
            rows.append({"frame": frame.step, "time": frame.time, **{k: float(energies[k]) for k in TERMS}})
    return rows


def write_energy_csv(path: str | os.PathLike, rows: list[dict[str, float]], overwrite: bool = False) -> Path:
    """Write per-frame energies as CSV (frame, time, terms, potential), atomically."""
    from .structure import atomic_output

    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "time", *TERMS, "potential"])
        for row in rows:
            terms = [row[k] for k in TERMS]
            writer.writerow([row["frame"], f"{row['time']:g}", *(f"{v:.6f}" for v in terms), f"{sum(terms):.6f}"])
    return Path(path)


def energy_summary(rows: list[dict[str, float]]) -> str:
    """Mean of each term over frames, one line per term, with GROMACS' names."""
    lines = [f"{'term':<20}{'mean (kJ/mol)':>16}"]
    for term in TERMS:
        lines.append(f"{GMX_TERM_NAMES[term]:<20}{np.mean([r[term] for r in rows]):>16.3f}")
    potential = np.mean([sum(r[k] for k in TERMS) for r in rows])
    lines.append(f"{'Potential':<20}{potential:>16.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- per-row terms (prior, sampler)


def bonded_row_energies(name: str, x: torch.Tensor, idx: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Energies (B, T) of bonded terms with per-item atom indices idx (B, T, k) into x (B, P, 3)
    and parameters (B, T, p) in topology units (degrees); no periodic images (local frames)."""
    batch = torch.arange(len(x), device=x.device)[:, None]
    points = [x[batch, idx[..., a]] for a in range(idx.shape[-1])]
    if name == "bond":
        r = (points[1] - points[0]).norm(dim=-1)
        return 0.5 * params[..., 1] * (r - params[..., 0]).square()
    if name == "angle":
        a, b = points[0] - points[1], points[2] - points[1]
        theta = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))
        return 0.5 * params[..., 1] * (theta - torch.deg2rad(params[..., 0])).square()
    b1, b2, b3 = points[1] - points[0], points[2] - points[1], points[3] - points[2]
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    phi = torch.atan2(b2.norm(dim=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))
    if name == "improper":
        dxi = phi - torch.deg2rad(params[..., 0])
        dxi = dxi - 2 * math.pi * torch.floor((dxi + math.pi) / (2 * math.pi))
        return 0.5 * params[..., 1] * dxi.square()
    return params[..., 1] * (1 + torch.cos(params[..., 2] * phi - torch.deg2rad(params[..., 0])))


def lj_row_energies(r2: torch.Tensor, c6: torch.Tensor, c12: torch.Tensor, cutoff: float,
                    shift: bool = True) -> torch.Tensor:
    """Lennard-Jones energies of pairs at squared distances r2, zero beyond the cut-off."""
    inside = r2 < cutoff**2
    r2 = torch.where(inside, r2, torch.ones_like(r2))
    inv6 = r2.reciprocal() ** 3
    lj = c12 * inv6 * inv6 - c6 * inv6
    if shift:
        rc6 = cutoff**-6
        lj = lj - (c12 * rc6 * rc6 - c6 * rc6)
    return torch.where(inside, lj, torch.zeros_like(lj))
