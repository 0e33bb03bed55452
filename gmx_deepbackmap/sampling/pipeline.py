"""The sampling stages of one frame as data: a `Pipeline` is the list of stages the config builds
(`build_pipeline`), each a named unit that transforms the `FrameState` in place. Turning a stage
off or adding one changes the list, not the code that runs it; the trace of what each stage left
(`FrameState.trace`, read by `benchmarks/bench_stages.py`) comes from the pipeline itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import SamplerConfig
from .bonds import RestoreBonds
from .fit import FitMolecules
from .forward import ForwardPass
from .gibbs import GibbsSweep
from .metropolis import Thermalise
from .mirror import MirrorCentres
from .repair import LeastStrained, RepairRound
from .state import FrameState


class Stage(Protocol):
    """One sampling stage: a name (in the trace) and what it does to a frame."""

    name: str

    def __call__(self, state: FrameState) -> None: ...


@dataclass(frozen=True)
class Pipeline:
    """Stages run in order on one frame; after each, the trace gets its name and the positions."""

    stages: tuple[Stage, ...]

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def __call__(self, state: FrameState) -> None:
        for stage in self.stages:
            stage(state)
            state.record(stage.name)


def build_pipeline(config: SamplerConfig) -> Pipeline:
    """The stages `config` asks for: the forward pass, `gibbs_sweeps` Gibbs sweeps, the repair
    rounds and the choice of the least strained frame they passed (if any rounds), bond
    restoration (if `constrain`), the mirroring of inverted chiral centres, the rigid fit of each
    molecule onto its CG beads (if `fit`), and the Metropolis sweeps of the last stage (unless
    `thermal` is "none")."""
    stages: list[Stage] = [ForwardPass(config.orientations)]
    stages += [GibbsSweep(k + 1, config.orientations) for k in range(config.gibbs_sweeps)]
    if config.repair_rounds:
        stages += [RepairRound(k + 1) for k in range(config.repair_rounds)] + [LeastStrained()]
    if config.constrain:
        stages.append(RestoreBonds())
    stages.append(MirrorCentres(config.orientations))
    if config.fit:
        stages.append(FitMolecules())
    if config.thermal != "none":
        stages.append(Thermalise(config.thermal_sweeps))
    return Pipeline(tuple(stages))
