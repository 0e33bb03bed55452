"""The one force field of the package: GROMACS energies of a topology in PyTorch.

`ForceField` evaluates per-term energies of batches of coordinates, differentiably, on CPU or
CUDA, in float32 or float64: whole frames (`gmx-dbm energy`) and, through `ForceField.subset`,
many small local environments (the sampler). `bonded_row_energies` and `lj_row_energies` apply
the same functional forms to batches whose items each have their own terms (the training prior).

The functional forms are those of `gmx mdrun` with the Verlet cut-off scheme:

- bonded terms (every form of `forms.FORMS`, one energy term each, and `[ pairs ]`) use
  minimum-image displacements, so molecules may be broken across the box;
- Lennard-Jones within the cut-off, shifted to zero at the cut-off (`potential-shift`) or not;
- reaction-field Coulomb (settings: `mdp.NonbondedSettings`), `f q_i q_j (1/r + k_rf r^2 - c_rf)`
  within the cut-off. Like the Verlet scheme, every *excluded* pair within the cut-off contributes
  `f q_i q_j (k_rf r^2 - c_rf)` and every atom a constant self term `-0.5 f c_rf q_i^2`. Checked
  against `gmx mdrun -rerun` (GROMACS 2022) on the sPS frames: "Coulomb (SR)" matches to 0.01 kJ/mol with both
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
from .forms import FORMS, form_energies, radians, square
from .frames import FrameSource, run_frames
from .mdp import NonbondedSettings
from .pbc import minimum_image, neighbour_pairs
from .topology import Topology, read_topology

ONE_4PI_EPS0 = 138.935458  # kJ mol^-1 nm e^-2, GROMACS' electric conversion factor
GMX_TERM_NAMES = {name: form.gmx_term for name, form in FORMS.items()} | {
    "lj": "LJ (SR)",
    "coulomb": "Coulomb (SR)",
    "lj14": "LJ-14",
    "coulomb14": "Coulomb-14",
    "dispersion_correction": "Disper. corr.",
}
TERMS = tuple(GMX_TERM_NAMES)
_NEIGHBOUR_SKIN = 1e-3  # nm: the grid search runs in float32; the exact cut-off is applied after it


class ForceField:
    """Energies of a GROMACS topology, or of a local subset of it (see `subset`).

    Call `energies(x, box)` with x (B, N, 3) or (N, 3) in nm and box rows (3, 3) or (B, 3, 3)
    in nm; the result maps every name of `TERMS` to a tensor (B,) (or a scalar) in kJ/mol.
    The potential energy is the sum of the terms. `settings`: cut-off, reaction field and LJ
    modifier (default: `NonbondedSettings()`, the sPS reference settings).
    """

    def __init__(
        self,
        topology: Topology,
        settings: NonbondedSettings | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        settings = settings or NonbondedSettings()
        self.settings = settings
        self.dtype, self.device = dtype, torch.device(device)
        self.n_atoms = topology.n_atoms
        cutoff, epsilon_rf, epsilon_r = settings.cutoff, settings.epsilon_rf, settings.epsilon_r
        self.cutoff = float(cutoff)
        # epsilon_rf = 0 means infinity in GROMACS (conducting boundary)
        k_rf = (
            1 / (2 * cutoff**3)
            if epsilon_rf == 0
            else ((epsilon_rf - epsilon_r) / ((2 * epsilon_rf + epsilon_r) * cutoff**3))
        )
        self.k_rf, self.c_rf = k_rf, 1 / cutoff + k_rf * cutoff**2
        self.f_elec = ONE_4PI_EPS0 / epsilon_r
        self.lj_shift = settings.lj_modifier == "potential-shift"

        self.terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, terms in topology.bonded.items():
            self.terms[name] = (self._long(terms.indices), radians(name, self._real(terms.params)))
        i, j = topology.pairs.indices.T  # 1-4 pairs: c6, c12 and the scaled f q_i q_j
        qq = topology.fudge_qq * self.f_elec * topology.charges[i] * topology.charges[j]
        self.terms["pair14"] = (
            self._long(topology.pairs.indices),
            self._real(np.column_stack([topology.pairs.params, qq])),
        )
        self.charges = self._real(topology.charges)
        self.type_index = self._long(topology.type_index)
        self.c6, self.c12 = self._real(topology.c6), self._real(topology.c12)
        self.exclusions = self._long(topology.exclusions)
        self._exclusion_keys = np.sort(topology.exclusions[:, 0] * self.n_atoms + topology.exclusions[:, 1])
        self.self_energy = -0.5 * self.f_elec * self.c_rf * float(np.square(topology.charges).sum())
        self.dispersion = _dispersion_coefficients(topology, settings) if settings.dispersion_correction else None
        self.local_pairs: tuple[torch.Tensor, ...] | None = None  # the dense pair block of a subset
        self._plan_vectors()

    def _plan_vectors(self) -> None:
        """Every displacement that bonded terms, 1-4 pairs and exclusions use, as unique atom
        pairs (so one minimum-image call serves them all), and for each user its (index, sign)
        into them, one per successive atom pair of its terms."""
        requests = {
            name: [(idx[:, k], idx[:, k + 1]) for k in range(idx.shape[1] - 1)] for name, (idx, _) in self.terms.items()
        }
        requests["exclusions"] = [(self.exclusions[:, 0], self.exclusions[:, 1])]
        flat = [pair for pairs in requests.values() for pair in pairs]
        first = torch.cat([a for a, _ in flat]).cpu().numpy()
        second = torch.cat([b for _, b in flat]).cpu().numpy()
        keys = np.minimum(first, second) * self.n_atoms + np.maximum(first, second)
        unique, inverse = np.unique(keys, return_inverse=True)
        sign = np.where(first < second, 1.0, -1.0)[:, None]
        self._vector_atoms = (self._long(unique // self.n_atoms), self._long(unique % self.n_atoms))
        self._vector_use, start = {}, 0
        for name, pairs in requests.items():
            self._vector_use[name] = []
            for a, _ in pairs:
                rows = slice(start, start + len(a))
                self._vector_use[name].append((self._long(inverse[rows]), self._real(sign[rows])))
                start += len(a)

    def _real(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device).to(self.dtype)

    def _long(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.int64), device=self.device)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ForceField:
        """A copy on another device and/or with another floating-point precision."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, dtype if value.is_floating_point() else None)
            if isinstance(value, (tuple, list)):
                return type(value)(move(v) for v in value)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        other = copy.copy(self)
        for name, value in vars(self).items():
            setattr(other, name, move(value))
        other.device, other.dtype = device, dtype
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

        Speed: with `box=None` no periodic images are searched (several times faster). That is
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
        other._plan_vectors()
        return other

    def _subset_pairs(self, atoms: np.ndarray, is_active: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The dense block of pairs (active atom a, local atom j): local indices of the active
        atoms, an (A, n) padding added to r^2 that moves self, duplicate (active-active counted
        once) and excluded pairs beyond the cut-off, and (A, n) pair parameters."""
        first = np.flatnonzero(is_active[atoms])
        gi, gj = atoms[first][:, None], atoms[None, :]
        keys = np.minimum(gi, gj) * self.n_atoms + np.maximum(gi, gj)
        drop = (is_active[gj] & (gj <= gi)) | contains_sorted(self._exclusion_keys, keys)
        pad = self._real(np.where(drop, 4 * self.cutoff**2, 0.0))
        gi, gj = np.broadcast_arrays(gi, gj)
        return self._long(first), pad, *self.pair_parameters(self._long(gi), self._long(gj))

    def pair_parameters(self, i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c6, c12, f q_i q_j and the LJ value at the cut-off (the potential shift) of pairs."""
        ti, tj = self.type_index[i], self.type_index[j]
        c6, c12 = self.c6[ti, tj], self.c12[ti, tj]
        qq = self.f_elec * self.charges[i] * self.charges[j]
        return c6, c12, qq, _lj_at_cutoff(c6, c12, self.cutoff, self.lj_shift)

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
        displacements = _displacement(x, *self._vector_atoms, box)  # (B, unique pairs, 3)

        def vectors(user: str) -> list[torch.Tensor]:
            return [displacements.index_select(1, rows) * sign for rows, sign in self._vector_use[user]]

        out = {}
        for name in FORMS:
            out[name] = form_energies(name, vectors(name), self.terms[name][1]).sum(-1)
        params = self.terms["pair14"][1]
        r2 = square(vectors("pair14")[0])
        out["lj14"] = _lj(r2, params[:, 0], params[:, 1], 0.0).sum(-1)
        out["coulomb14"] = (params[:, 2] * r2.rsqrt()).sum(-1)
        out["lj"], coulomb = self._nonbonded(x, box)
        out["coulomb"] = coulomb + self._excluded_rf(square(vectors("exclusions")[0])) + self.self_energy
        out["dispersion_correction"] = self._dispersion_correction(box, len(x))
        out = {name: out[name] for name in TERMS}
        return out if batched else {k: v[0] for k, v in out.items()}

    def _nonbonded(self, x: torch.Tensor, box) -> tuple[torch.Tensor, torch.Tensor]:
        """LJ and reaction-field Coulomb (B,) of non-excluded pairs within the cut-off."""
        if self.local_pairs is not None:
            active, pad, *params = self.local_pairs
            d = x[:, None] - x.index_select(1, active)[:, :, None]  # (B, A, n, 3)
            return self._pair_energies(square(_minimum_image(d, box)) + pad, *params)
        lj, coulomb = [], []
        for b in range(len(x)):
            i, j, shifts = self._neighbours(x[b], box if box.dim() == 2 else box[b])
            r2 = square(x[b, j] - x[b, i] + shifts)
            energies = self._pair_energies(r2[None], *self.pair_parameters(i, j))
            lj.append(energies[0])
            coulomb.append(energies[1])
        return torch.cat(lj), torch.cat(coulomb)

    def _neighbours(self, x: torch.Tensor, box: torch.Tensor):
        """Non-excluded pairs (i, j) within the cut-off of one frame and their periodic shifts."""
        pairs, shifts = neighbour_pairs(
            x.detach().cpu().double().numpy(), box.detach().cpu().double().numpy(), self.cutoff + _NEIGHBOUR_SKIN
        )
        keep = ~contains_sorted(self._exclusion_keys, pairs[:, 0] * self.n_atoms + pairs[:, 1])
        pairs = self._long(pairs[keep])
        return pairs[:, 0], pairs[:, 1], self._real(shifts[keep])

    def _pair_energies(self, r2, c6, c12, qq, lj_shift) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed LJ and RF Coulomb (B,) of pairs at squared distances r2 (B, ...)."""
        inside = r2 < self.cutoff**2
        coulomb = qq * (r2.rsqrt() + self.k_rf * r2 - self.c_rf)
        zero = torch.zeros((), dtype=r2.dtype, device=r2.device)
        return (
            torch.where(inside, _lj(r2, c6, c12, lj_shift), zero).flatten(1).sum(-1),
            torch.where(inside, coulomb, zero).flatten(1).sum(-1),
        )

    def _dispersion_correction(self, box, batch: int) -> torch.Tensor:
        """(B,) GROMACS' dispersion correction (DispCorr = Ener): a + b / volume; zero for subsets
        (it does not change when atoms move) and without the setting."""
        if self.dispersion is None or self.local_pairs is not None:
            return torch.zeros(batch, dtype=self.dtype, device=self.device)
        volume = torch.linalg.det(box).abs().expand(batch)
        return self.dispersion[0] + self.dispersion[1] / volume

    def _excluded_rf(self, r2: torch.Tensor) -> torch.Tensor:
        """Reaction-field correction of excluded pairs at squared distances r2 (B, E) within the
        cut-off (Verlet scheme)."""
        i, j = self.exclusions[:, 0], self.exclusions[:, 1]
        qq = self.f_elec * self.charges[i] * self.charges[j]
        energy = qq * (self.k_rf * r2 - self.c_rf)
        return torch.where(r2 < self.cutoff**2, energy, torch.zeros_like(energy)).sum(-1)


# ---------------------------------------------------------------------- functional forms


def _dispersion_coefficients(topology: Topology, settings: NonbondedSettings) -> tuple[float, float]:
    """(a, b) of the dispersion correction a + b / V (kJ/mol, V in nm^3), as GROMACS computes it:
    the average c6 over all atom pairs but the excluded ones, -c6 / r^6 integrated beyond the cut-off
    and, with potential-shift, the shift constant within it (counted for every pair within the
    cut-off at the mean density, less one self pair)."""
    n_atoms, rc = topology.n_atoms, settings.cutoff
    counts = np.bincount(topology.type_index, minlength=len(topology.type_names)).astype(np.float64)
    c6 = topology.c6
    pairs_c6 = 0.5 * (counts @ c6 @ counts - counts @ np.diag(c6))
    excluded = topology.type_index[topology.exclusions]
    pairs_c6 -= c6[excluded[:, 0], excluded[:, 1]].sum()
    average = pairs_c6 / (n_atoms * (n_atoms - 1) / 2 - len(topology.exclusions))
    shift = settings.lj_modifier == "potential-shift"
    per_density = -4 * math.pi / (3 * rc**3) * (2 if shift else 1)  # tail, and the shift inside the cut-off
    return 0.5 * n_atoms * average * (rc**-6 if shift else 0.0), 0.5 * n_atoms * average * n_atoms * per_density


def _lj(r2: torch.Tensor, c6: torch.Tensor, c12: torch.Tensor, shift) -> torch.Tensor:
    """Lennard-Jones c12/r^12 - c6/r^6 - shift at squared distances r2."""
    inv6 = r2.reciprocal() ** 3
    return (c12 * inv6 - c6) * inv6 - shift


def _lj_at_cutoff(c6: torch.Tensor, c12: torch.Tensor, cutoff: float, shift: bool) -> torch.Tensor:
    """The constant that potential-shift subtracts (zero without the modifier)."""
    rc6 = cutoff**-6 if shift else 0.0
    return (c12 * rc6 - c6) * rc6


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


def contains_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which keys occur in an ascending array."""
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


# ---------------------------------------------------------------------- per-row terms (prior, sampler)


def bonded_row_energies(name: str, x: torch.Tensor, idx: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Energies (B, T) of bonded terms with per-item atom indices idx (B, T, k) into x (B, P, 3)
    and parameters (B, T, p) in topology units (degrees); no periodic images (local frames)."""
    batch = torch.arange(len(x), device=x.device)[:, None]
    points = [x[batch, idx[..., a]] for a in range(idx.shape[-1])]
    return vector_energies(name, [b - a for a, b in zip(points[:-1], points[1:])], params)


def vector_energies(name: str, bond_vectors: list[torch.Tensor], params: torch.Tensor) -> torch.Tensor:
    """Energies (...,) of bonded terms `name` from the vectors x_(k+1) - x_k (..., 3) along their
    atoms and their parameters (..., p) in topology units (degrees)."""
    return form_energies(name, bond_vectors, radians(name, params))


def lj_row_energies(
    r2: torch.Tensor, c6: torch.Tensor, c12: torch.Tensor, cutoff: float, shift: bool = True
) -> torch.Tensor:
    """Lennard-Jones energies of pairs at squared distances r2, zero beyond the cut-off."""
    lj = _lj(r2, c6, c12, _lj_at_cutoff(c6, c12, cutoff, shift))
    return torch.where(r2 < cutoff**2, lj, torch.zeros_like(lj))


# ---------------------------------------------------------------------- whole frames (gmx-dbm energy)


def frame_energies(
    structure: str | os.PathLike,
    topology: Topology | str | os.PathLike,
    trajectory: str | os.PathLike | None = None,
    frames: slice = slice(None),
    device: str = "cpu",
    progress: bool = False,
    settings: NonbondedSettings | None = None,
    allow_renamed: bool = False,
) -> list[dict[str, float]]:
    """Per-frame energies of a structure or trajectory: one dict per frame with `frame`, `time`
    (ps) and every term of `TERMS` (kJ/mol). `settings` default: the sPS reference settings. Atoms
    named otherwise than in the topology are refused (`check_names`) unless `allow_renamed`."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available")
    top = topology if isinstance(topology, Topology) else read_topology(topology)
    force_field = ForceField(top, settings, device=device)
    checks = dict(cutoff=force_field.cutoff + _NEIGHBOUR_SKIN, allow_renamed=allow_renamed)
    source = FrameSource.of_topology(top, structure, trajectory, frames, **checks)

    def row(frame) -> dict[str, float]:
        energies = force_field.energies(frame.positions, frame.box)
        return {"frame": frame.step, "time": frame.time, **{k: float(energies[k]) for k in TERMS}}

    with torch.no_grad():
        return run_frames(source, row, desc="energy", progress=progress)


def write_energy_csv(path: str | os.PathLike, rows: list[dict[str, float]], overwrite: bool = False) -> Path:
    """Write per-frame energies as CSV (frame, time in ps, terms and potential in kJ/mol), atomically."""
    from .structure import atomic_output

    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "time", *TERMS, "potential"])
        for row in rows:
            terms = [row[k] for k in TERMS]
            energies = [f"{v:.6f}" for v in (*terms, sum(terms))]
            writer.writerow([row["frame"], f"{row['time']:g}", *energies])
    return Path(path)


def energy_summary(rows: list[dict[str, float]]) -> str:
    """Mean of each term over frames, one line per term the system has (as `gmx energy` lists
    them), with GROMACS' names."""
    lines = [f"{'term':<20}{'mean (kJ/mol)':>16}"]
    for term in (t for t in TERMS if any(r[t] != 0 for r in rows)):
        lines.append(f"{GMX_TERM_NAMES[term]:<20}{np.mean([r[term] for r in rows]):>16.3f}")
    potential = np.mean([sum(r[k] for k in TERMS) for r in rows])
    lines.append(f"{'Potential':<20}{potential:>16.3f}")
    return "\n".join(lines)
