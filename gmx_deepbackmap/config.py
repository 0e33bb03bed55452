"""Every option of the sampler, with its default, in one place: `SamplerConfig`.

The command line builds `gmx-dbm backmap`'s options (names, types, choices, defaults, help) from
this dataclass's fields, `sampling.backmap`, `chunks.backmap_in_chunks` and
`sampling.backmap_frame` take it whole, and chunk manifests and model files record it. The
constants below are the sampler's fixed settings that option help texts quote; they are measured
on sPS and documented where they are used (`sampling/`). Nothing here imports torch, so the
command line starts fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import InputError

# What picks the turn of a placed step (`sampling.state.place`): "environment", the energy of the
# step with its surroundings (Lennard-Jones and the bonded terms that join it to atoms in place;
# its own bonded terms are left as generated), or "all", that plus its own bonds, angles and
# dihedrals (choosing the most ideal of K shapes made sPS rings too flat at 568 K).
RANKINGS = ("environment", "all")
# What the last stage moves at the CG frames' temperature (`thermal.thermal_moves`).
THERMAL_SELECTIONS = ("groups", "hydrogens", "planar-hydrogens")
THERMAL = (*THERMAL_SELECTIONS, "none")
# Arithmetic of the generator's convolutions: "bfloat16" (float32 sums of bfloat16 products) halves
# the sampler's network time on CPUs with bfloat16 units (an sPS frame on 2 Sapphire Rapids cores:
# the generator 2.1x faster, densities within 5e-4 of float32) and is 15-50x slower without them;
# "auto" picks it where the CPU has them, float32 elsewhere (CUDA included: not measured there).
PRECISIONS = ("auto", "float32", "bfloat16")

# Turns per forward-pass hydrogen step: the first sweep re-places every hydrogen before any other
# hydrogen sees it; meanwhile they only shape other molecules' heavy atoms. Fewer turns there pay
# for about half of the repair rounds' cost (an sPS frame: 4 s of 60; not worse on the frame compared).
FORWARD_HYDROGEN_ORIENTATIONS = 2
REPAIR_ORIENTATIONS = 8  # turns per step of a repaired bead
# kJ/mol: one Lennard-Jones pair this high is a strained contact (sPS at 568 K: 1 reference chain in
# 360 has a pair above 30; sampled frames had one in five, mostly methine H against a ring carbon).
STRAINED_PAIR = 25.0
# kJ/mol: one angle or dihedral term this high is a bent joint (sPS: the most in 10 reference frames is
# 36 at 568 K and 18 at 313 K; sampled 568 K frames had 1-19 above 40, at backbone junctions, and one
# such frame stopped MD on LINCS warnings).
STRAINED_TERM = 40.0
OUTLIER_ROUNDS = 3  # repair rounds that also re-place energy outliers; later ones only strained steps


def _option(help: str, *, minimum: float | None = None, choices: tuple[str, ...] | None = None, **extra) -> dict:
    """Field metadata the command line reads: help text, lower bound, choices, and extras
    (`flag`: the name of a boolean's switch; `metavar`; `open_minimum`: the bound excluded)."""
    return {"help": help, "minimum": minimum, "choices": choices, **extra}


@dataclass(frozen=True)
class SamplerConfig:
    """How `gmx-dbm backmap` samples each frame (see `sampling.build_pipeline` for the stages)."""

    gibbs_sweeps: int = field(
        default=2,
        metadata=_option(
            "Gibbs sweeps after the forward pass (each re-places every atom seeing all others).", minimum=0
        ),
    )
    orientations: int = field(
        default=6,
        metadata=_option(
            f"Turns about each bead's frame axis tried per placement (forward-pass hydrogens: at most "
            f"{FORWARD_HYDROGEN_ORIENTATIONS}); the lowest-energy one that keeps the model's chiral centres is kept.",
            minimum=1,
        ),
    )
    ranking: str = field(
        default="environment",
        metadata=_option(
            "Energy that picks the turn: 'environment' (Lennard-Jones and the bonded terms joining the placed "
            "atoms to the others; their own angles and dihedrals stay as generated) or 'all' (plus their own "
            "bonded terms: more ideal, colder shapes).",
            choices=RANKINGS,
        ),
    )
    repair_rounds: int = field(
        default=5,
        metadata=_option(
            f"Rounds after the sweeps that re-place, under {REPAIR_ORIENTATIONS} turns, the beads with a strained "
            f"contact (a Lennard-Jones pair above {STRAINED_PAIR:g} kJ/mol) or a bent joint (an angle or dihedral "
            f"term above {STRAINED_TERM:g} kJ/mol) and, in the first {OUTLIER_ROUNDS}, those whose energy is an "
            "outlier among the same bead's copies in other molecules (0: none).",
            minimum=0,
        ),
    )
    temperature: float | None = field(
        default=None,
        metadata=_option(
            "Temperature of the CG frames, K (default: the model's training temperature, when it records one; "
            "a line says so). The --thermal stage samples at it.",
            minimum=0,
            open_minimum=True,
            metavar="K",
        ),
    )
    thermal: str = field(
        default="groups",
        metadata=_option(
            "Last stage: Metropolis sweeps with the force field at --temperature, bond lengths kept and bead "
            "centres held to the CG frame. 'groups': hydrogens, and heavy atoms with what hangs off them, turned "
            "about their neighbours; 'hydrogens'; 'planar-hydrogens' (sp2 C-H only); 'none' (as generated).",
            choices=THERMAL,
        ),
    )
    thermal_sweeps: int = field(  # sPS, 4 frames at 313 K: proper-dihedral energy 108 % after 30, 104 % after 60
        default=60,
        metadata=_option(
            "Sweeps of the --thermal stage (each tries every move once; the step sizes adapt during the first "
            "half). Fewer are faster and leave dihedrals more strained.",
            minimum=0,
        ),
    )
    # sPS at 568 K, 20 sweeps: 0.002 strained the backbone (one frame: angle energy 140 % of the
    # reference); on 4 frames, 0.01 kept the centres 0.018 nm RMS off (the generator's: 0.020), proper
    # dihedral energy 114 %; 0.02: 0.026 nm, 111 %; 0.015 with 30 sweeps: 0.023 nm, 111 %, angle 102 %.
    centre_spread: float = field(
        default=0.015,
        metadata=_option(
            "nm: thermal spread of each bead centre about its CG position in the last stage (a harmonic "
            "restraint); smaller keeps the output closer to the CG frame, at some strain where the generated "
            "atoms lie off it.",
            minimum=0.0,
            open_minimum=True,
        ),
    )
    precision: str = field(
        default="auto",
        metadata=_option(
            "Arithmetic of the generator's convolutions: 'auto' is bfloat16 on CPUs with bfloat16 units "
            "(AVX512-BF16 or AMX; about 2x faster there, 15-50x slower without them) and float32 elsewhere.",
            choices=PRECISIONS,
        ),
    )
    scale_noise: bool = field(
        default=False,
        metadata=_option(
            "Also scale the generator's noise by sqrt(T / T_train) (the model must record T_train), so that "
            "coordinates the noise carries get the spread of --temperature.",
            flag="--scale-noise",
        ),
    )
    constrain: bool = field(
        default=True,
        metadata=_option(
            "Keep generated bond lengths (default: restore them to the topology's b0, as in an ensemble run "
            "with constraints = all-bonds, keeping the generated angles, torsions and contacts as far as possible).",
            flag="--no-constrain",
        ),
    )
    fit: bool = field(
        default=True,
        metadata=_option(
            "Do not move each molecule rigidly onto its CG beads before the last stage (default: turn and shift "
            "it to the least-squares fit of its beads, shapes and internal energies unchanged).",
            flag="--no-fit",
        ),
    )
    seed: int = field(
        default=0, metadata=_option("Random seed; each frame's result depends only on it and the frame's index.")
    )
    device: str = field(default="cpu", metadata=_option("cpu, cuda or cuda:N."))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise InputError(f"{f.name} '{value}': expected one of {', '.join(meta['choices'])}")
            if meta.get("minimum") is not None and value is not None and not _above(value, meta):
                bound = ">" if meta.get("open_minimum") else ">="
                raise InputError(f"{f.name} {value}: expected {bound} {meta['minimum']:g}")

    def as_dict(self) -> dict:
        """The settings as plain data (chunk manifests, model files)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplerConfig:
        """Settings recorded by `as_dict`; unknown keys are an error, missing ones take the default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown sampler setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**data)


def _above(value: float, meta: dict) -> bool:
    return value > meta["minimum"] if meta.get("open_minimum") else value >= meta["minimum"]


DEFAULTS = SamplerConfig()  # the package's defaults (frozen: safe to share)
