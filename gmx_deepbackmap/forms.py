"""The bonded functional forms of GROMACS, each defined once: topology section and function
type, the energy term `gmx energy` names, parameter columns and the PyTorch energy.

The topology reader stores every bonded interaction under its form's name (`Topology.bonded`),
`ForceField` and `LocalPrior` evaluate them with `Form.energy`, and the compiled Metropolis kernels
of `thermal` restate them in numba (pinned to these by a test over random geometries). Forms as in
the GROMACS reference manual (bonded interactions):

- bond (bonds 1): kb/2 (b - b0)^2; g96_bond (bonds 2): kb/4 (b^2 - b0^2)^2;
- angle (angles 1): k/2 (theta - theta0)^2; g96_angle (angles 2): k/2 (cos theta - cos theta0)^2;
  urey_bradley (angles 5): the harmonic angle plus kub/2 (r13 - r13_0)^2;
- proper (dihedrals 1 and 9, one row per term) and periodic_improper (dihedrals 4):
  k (1 + cos(n phi - phi_s)); improper (dihedrals 2): k/2 (xi - xi0)^2, xi - xi0 wrapped into
  [-pi, pi); ryckaert_bellemans (dihedrals 3) and fourier (dihedrals 5, converted to
  Ryckaert-Bellemans coefficients as grompp does): sum_n C_n cos^n(psi), psi = phi - 180 degrees.

Dihedrals follow the IUPAC sign convention (cis 0, trans 180 degrees). Units: nm, kJ/mol;
parameters are stored in degrees and evaluated in radians (`radians`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Form:
    """One bonded functional form."""

    name: str
    section: str  # topology section that writes it
    funct: int  # its function type there (dihedrals 9 are read as `proper` rows)
    gmx_term: str  # the energy term of `gmx energy`
    columns: tuple[str, ...]  # parameter columns as stored (GROMACS units, angles in degrees)
    angles: tuple[int, ...]  # which columns are angles (degrees)
    energy: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]  # bond vectors, params in radians

    @property
    def atoms(self) -> int:
        return {"bonds": 2, "angles": 3, "dihedrals": 4}[self.section]


# ---------------------------------------------------------------------- geometry


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scalar products over the last axis (3); far faster than `(a * b).sum(-1)` on CPU."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def square(d: torch.Tensor) -> torch.Tensor:
    """Squared lengths over the last axis (3)."""
    return dot(d, d)


def length(squared: torch.Tensor) -> torch.Tensor:
    """sqrt, with zero gradient (not infinite) at zero."""
    return squared.clamp(min=torch.finfo(squared.dtype).tiny).sqrt()


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 with zero gradient (not NaN) at y = x = 0, where the angle is undefined (value 0)."""
    undefined = (y == 0) & (x == 0)
    return torch.atan2(y, torch.where(undefined, torch.ones_like(x), x))


def geometry(bond_vectors: list[torch.Tensor]) -> torch.Tensor:
    """Bond length, angle or dihedral (radians) from the 1, 2 or 3 vectors b_k = x_(k+1) - x_k
    along a term's atoms; atan2 forms stay accurate and differentiable near 0 and pi.

    Degenerate geometries (coinciding atoms, collinear bonds: an untrained generator makes them)
    get finite gradients: zero length and the undefined angle of a zero vector pass none.
    """
    if len(bond_vectors) == 1:
        return length(square(bond_vectors[0]))
    if len(bond_vectors) == 2:
        b1, b2 = bond_vectors
        return _atan2(length(square(torch.linalg.cross(b1, b2))), -dot(b1, b2))
    b1, b2, b3 = bond_vectors  # IUPAC/GROMACS sign convention
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    return _atan2(length(square(b2)) * dot(b1, n2), dot(n1, n2))


# ---------------------------------------------------------------------- energies


def _harmonic(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return 0.5 * p[..., 1] * (value - p[..., 0]).square()


def _g96_bond(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    return 0.25 * p[..., 1] * (square(v[0]) - p[..., 0].square()).square()


def _g96_angle(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    b1, b2 = v
    cos = -dot(b1, b2) / length(square(b1) * square(b2))
    return 0.5 * p[..., 1] * (cos - torch.cos(p[..., 0])).square()


def _urey_bradley(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    r13 = length(square(v[0] + v[1]))
    return _harmonic(geometry(v), p) + 0.5 * p[..., 3] * (r13 - p[..., 2]).square()


def _periodic(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    return p[..., 1] * (1 + torch.cos(p[..., 2] * geometry(v) - p[..., 0]))


def _harmonic_improper(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    dxi = geometry(v) - p[..., 0]
    dxi = dxi - 2 * math.pi * torch.floor((dxi + math.pi) / (2 * math.pi))  # into [-pi, pi)
    return 0.5 * p[..., 1] * dxi.square()


def _ryckaert_bellemans(v: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    cos_psi = -torch.cos(geometry(v))  # psi = phi - 180 degrees
    energy, power = p[..., 0], torch.ones_like(cos_psi)
    for n in range(1, 6):
        power = power * cos_psi
        energy = energy + p[..., n] * power
    return energy


_RB = ("C0", "C1", "C2", "C3", "C4", "C5")
FORMS: dict[str, Form] = {
    f.name: f
    for f in (
        Form("bond", "bonds", 1, "Bond", ("b0", "kb"), (), lambda v, p: _harmonic(geometry(v), p)),
        Form("g96_bond", "bonds", 2, "G96Bond", ("b0", "kb"), (), _g96_bond),
        Form("angle", "angles", 1, "Angle", ("theta0", "k"), (0,), lambda v, p: _harmonic(geometry(v), p)),
        Form("g96_angle", "angles", 2, "G96Angle", ("theta0", "k"), (0,), _g96_angle),
        Form("urey_bradley", "angles", 5, "U-B", ("theta0", "k", "r13", "kub"), (0,), _urey_bradley),
        Form("proper", "dihedrals", 1, "Proper Dih.", ("phi_s", "k", "multiplicity"), (0,), _periodic),
        Form("ryckaert_bellemans", "dihedrals", 3, "Ryckaert-Bell.", _RB, (), _ryckaert_bellemans),
        Form("fourier", "dihedrals", 5, "Fourier Dih.", _RB, (), _ryckaert_bellemans),
        Form("improper", "dihedrals", 2, "Improper Dih.", ("xi0", "k"), (0,), _harmonic_improper),
        Form("periodic_improper", "dihedrals", 4, "Per. Imp. Dih.", ("phi_s", "k", "multiplicity"), (0,), _periodic),
    )
}
FORM_OF_FUNCT = {(f.section, f.funct): f.name for f in FORMS.values()} | {("dihedrals", 9): "proper"}
# Parameters a topology line gives per function type (dihedrals 5: the four Fourier coefficients)
PARAMETER_COUNT = {key: len(FORMS[name].columns) for key, name in FORM_OF_FUNCT.items()} | {("dihedrals", 5): 4}


def radians(name: str, params: torch.Tensor) -> torch.Tensor:
    """Parameters of form `name` with its angle columns in radians."""
    angles = FORMS[name].angles
    if not angles:
        return params
    scale = torch.ones(params.shape[-1], dtype=params.dtype, device=params.device)
    scale[list(angles)] = math.pi / 180
    return params * scale


def form_energies(name: str, bond_vectors: list[torch.Tensor], params: torch.Tensor) -> torch.Tensor:
    """Energies (...,) of terms of form `name` from the vectors x_(k+1) - x_k (..., 3) along their
    atoms and their parameters (..., p) in radians (see `radians`)."""
    return FORMS[name].energy(bond_vectors, params)


def fourier_to_ryckaert_bellemans(f1: float, f2: float, f3: float, f4: float) -> tuple[float, ...]:
    """Ryckaert-Bellemans C0..C5 of Fourier coefficients F1..F4 (the conversion grompp makes)."""
    return (f2 + (f1 + f3) / 2, (-f1 + 3 * f3) / 2, -f2 + 4 * f4, -2 * f3, -4 * f4, 0.0)
