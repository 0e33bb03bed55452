"""Non-bonded settings of the force field, as a user's `.mdp` gives them to `gmx mdrun`.

The force field evaluates the Verlet cut-off scheme's non-bonded forms: Lennard-Jones within
the cut-off, plain or shifted to zero there (`vdw-modifier`), and reaction-field Coulomb. A plain
Coulomb cut-off is reaction field with epsilon_rf = 1, as in the Verlet scheme; PME and Ewald have
no real-space-only equivalent, so they are approximated by reaction field with a conducting
boundary (epsilon_rf = 0), and the reading says so. What the force field cannot evaluate
(unequal cut-offs, switched potentials, LJ-PME, the repulsion part of DispCorr = AllEner) is refused with the file
and key. Defaults: the sPS reference settings (reaction field, epsilon_rf 2.5, 1.0 nm,
potential-shift).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .bundled import read_mdp
from .errors import InputError

LJ_MODIFIERS = ("potential-shift", "none")


@dataclass(frozen=True)
class NonbondedSettings:
    """Cut-off (nm, rvdw = rcoulomb), reaction field and the Lennard-Jones modifier."""

    cutoff: float = 1.0
    epsilon_r: float = 1.0
    epsilon_rf: float = 2.5  # 0: infinity (conducting boundary)
    lj_modifier: str = "potential-shift"
    dispersion_correction: bool = False  # DispCorr = Ener or EnerPres: the "Disper. corr." energy term
    note: str = ""  # how the settings approximate the .mdp's, printed once where it is read

    def __post_init__(self):
        if self.cutoff <= 0:
            raise InputError(f"cut-off {self.cutoff} nm (expected > 0)")
        if self.epsilon_r <= 0:
            raise InputError(f"epsilon-r {self.epsilon_r} (expected > 0)")
        if self.lj_modifier not in LJ_MODIFIERS:
            raise InputError(f"vdw-modifier '{self.lj_modifier}' (expected one of {', '.join(LJ_MODIFIERS)})")

    def as_dict(self) -> dict:
        """The settings as plain values (a model file's training config records them)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> NonbondedSettings:
        """The settings `as_dict` recorded (None: the defaults)."""
        return cls(**(values or {}))


def nonbonded_settings(mdp: str | os.PathLike | None = None) -> NonbondedSettings:
    """The settings of an `.mdp` file as the force field evaluates them (None: the defaults);
    prints the line that says how PME/Ewald is approximated, where it is."""
    settings = NonbondedSettings() if mdp is None else read_nonbonded(mdp)
    if settings.note:
        print(settings.note)
    return settings


def topology_options(mdp: str | os.PathLike | None) -> tuple[dict[str, str], list[Path]]:
    """The preprocessor macros (`define = -DPOSRES -DN=2`) and include folders (`include = -I/dir`)
    grompp takes from an `.mdp`, as `read_topology(path, defines, include_dirs)` takes them."""
    if mdp is None:
        return {}, []
    keys = read_mdp(mdp)
    defines = {}
    for word in keys.get("define", "").split():
        if not word.startswith("-D") or len(word) < 3:
            raise InputError(f"define: '{word}' (expected -DNAME or -DNAME=VALUE)", mdp)
        name, _, value = word[2:].partition("=")
        defines[name] = value
    folders = []
    for word in keys.get("include", "").split():
        if not word.startswith("-I") or len(word) < 3:
            raise InputError(f"include: '{word}' (expected -I/folder)", mdp)
        folders.append(Path(mdp).parent / word[2:])
    return defines, folders


def model_settings(training: dict) -> NonbondedSettings:
    """The settings a model was trained with, from its file's training config (`model.training`;
    models trained before the settings were recorded: the defaults)."""
    return NonbondedSettings.from_dict(training.get("nonbonded"))


def read_nonbonded(mdp: str | os.PathLike) -> NonbondedSettings:
    """The non-bonded settings of an `.mdp` file, with GROMACS' defaults where keys are absent."""
    if not os.path.isfile(mdp):
        raise InputError("mdp file not found", mdp)
    keys = read_mdp(mdp)

    def value(key: str, default: str) -> str:
        return keys.get(key, default).lower()

    def number(key: str, default: str) -> float:
        try:
            return float(value(key, default))
        except ValueError:
            raise InputError(f"{key} = {value(key, default)} (expected a number)", mdp) from None

    def refuse(what: str) -> InputError:
        return InputError(f"{what}: not supported by the force field of gmx-dbm", mdp)

    if value("cutoffscheme", "verlet") != "verlet":
        raise refuse("cutoff-scheme = " + value("cutoffscheme", ""))
    rvdw, rcoulomb = number("rvdw", "1"), number("rcoulomb", "1")
    if rvdw != rcoulomb:
        raise refuse(f"rvdw = {rvdw:g} != rcoulomb = {rcoulomb:g} (unequal cut-offs)")
    vdwtype = value("vdwtype", "cut-off")
    if vdwtype != "cut-off":
        raise refuse(f"vdwtype = {vdwtype} (expected cut-off)")
    modifier = value("vdwmodifier", "potential-shift")
    modifier = "potential-shift" if modifier == "potential-shift-verlet" else modifier
    if modifier not in LJ_MODIFIERS:
        raise refuse(f"vdw-modifier = {modifier} (expected potential-shift or none)")
    dispcorr = value("dispcorr", "no")
    if dispcorr not in ("no", "ener", "enerpres"):
        raise refuse(f"DispCorr = {dispcorr} (expected no, Ener or EnerPres)")
    epsilon_rf, note = _coulomb(value("coulombtype", "cut-off"), number("epsilonrf", "0"), mdp)
    return NonbondedSettings(rvdw, number("epsilonr", "1"), epsilon_rf, modifier, dispcorr != "no", note)


def _coulomb(coulombtype: str, epsilon_rf: float, mdp) -> tuple[float, str]:
    """epsilon_rf of the reaction field that stands for `coulombtype`, and a note where it is an
    approximation."""
    if coulombtype == "reaction-field":
        return epsilon_rf, ""
    if coulombtype == "cut-off":
        return 1.0, ""
    if coulombtype in ("pme", "ewald"):
        return 0.0, (
            f"{mdp}: coulombtype = {coulombtype} is approximated by reaction field with epsilon-rf = 0 "
            "(conducting boundary): Coulomb energies are not those of mdrun"
        )
    raise InputError(
        f"coulombtype = {coulombtype}: not supported (expected reaction-field, cut-off, pme or ewald)", mdp
    )
