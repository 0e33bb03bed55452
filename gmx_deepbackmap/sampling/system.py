"""What sampling a system needs besides its CG frames, built once for every frame (`SystemParts`),
and the temperatures it samples at."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..config import THERMAL
from ..constraints import Constraints, bond_constraints
from ..energies import ForceField
from ..environment import SystemPlan, plan_system
from ..errors import InputError
from ..mapping import Mapping
from ..mdp import NonbondedSettings, model_settings
from ..model import DeepBackmapModel
from ..pbc import unwrap_levels
from ..prior import LocalPrior
from ..stereo import StereoCheck, system_stereo
from ..thermal import ThermalMoves, thermal_moves
from ..topology import Topology


@dataclass(frozen=True)
class SystemParts:
    """The plan, energy prior, chiral-centre check, bond constraints (None: bonds left as generated),
    the moves of the last stage (None: no last stage), the mapping, and the breadth-first levels that
    make molecules whole (`pbc.unwrap_levels`) of one system."""

    plan: SystemPlan
    prior: LocalPrior
    stereo: StereoCheck
    constraints: Constraints | None
    thermal: ThermalMoves | None
    mapping: Mapping
    levels: list[tuple[torch.Tensor, torch.Tensor]]


def prepare_system(
    model: DeepBackmapModel,
    topology: Topology,
    mapping: Mapping,
    constrain: bool = True,
    thermal: str = "groups",
    settings: NonbondedSettings | None = None,
) -> SystemParts:
    """The `SystemParts` of a system for `model`: with `constrain`, bond constraints; `thermal`
    (`config.THERMAL`) selects what the last stage moves; `settings`: the non-bonded settings of
    the prior and the last stage (default: those the model was trained with, `mdp.model_settings`)."""
    settings = settings or model_settings(model.training)
    if thermal not in THERMAL:
        raise InputError(f"thermal '{thermal}': expected one of {', '.join(THERMAL)}")
    plan = plan_system(topology, mapping, model.layout)
    centres, signs, hydrogens = system_stereo(topology, model.stereo)
    moves = (
        None if thermal == "none" else thermal_moves(topology, ForceField(topology), thermal, mapping, (centres, signs))
    )
    return SystemParts(
        plan,
        LocalPrior(topology, plan, settings),
        StereoCheck(plan, centres, signs, hydrogens),
        bond_constraints(topology) if constrain else None,
        moves,
        mapping,
        unwrap_levels(topology),
    )


def noise_scale_for(model: DeepBackmapModel, temperature: float | None, path: str | os.PathLike | None = None) -> float:
    """How much to scale the generator's noise to sample at `temperature` (K): sqrt(T / T_train),
    T_train the temperature of the model's training frames (its config's `temperature`). Thermal
    displacements along stiff (harmonic) coordinates grow as sqrt(T), so a generator whose noise
    carries them draws a colder or hotter spread with it; the CG frame sets everything else.
    None: the noise as trained (1). `path`: the model file, named in errors."""
    if temperature is None:
        return 1.0
    trained = model.training.get("temperature")
    if trained is None:
        raise InputError(
            "the model does not record the temperature of its training frames "
            "(training config key `temperature`), so it cannot be sampled at another one",
            path,
        )
    if not temperature > 0:
        raise InputError(f"temperature {temperature}: expected a positive number of kelvin")
    return math.sqrt(temperature / trained)


def frames_temperature(
    model: DeepBackmapModel, temperature: float | None, thermal: str, path: str | os.PathLike | None = None
) -> float | None:
    """The temperature (K) of the CG frames: `temperature`, else that of the model's training
    frames. Needed unless `thermal` is "none"; `path`: the model file, named in errors."""
    kelvin = model.training.get("temperature") if temperature is None else temperature
    if kelvin is None and thermal != "none":
        raise InputError(
            "the last stage samples at the temperature of the CG frames, and the model does not "
            "record that of its training frames: give --temperature (or --thermal none)",
            path,
        )
    return kelvin
