"""`gmx-dbm backmap`: CG frames from files to atomistic frames in a file, through the frame driver."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..config import DEFAULTS, SamplerConfig
from ..errors import InputError
from ..frames import FrameOutput, FrameSource, frame_seed, run_frames
from ..mapping import read_mapping
from ..mdp import model_settings, nonbonded_settings, topology_options
from ..model import load_model, resolve_model
from ..structure import Frame
from ..thermal import NEIGHBOUR_SKIN
from ..topology import read_topology, system_residue_numbers
from .frame import backmap_frame
from .pipeline import build_pipeline
from .system import frames_temperature, noise_scale_for, prepare_system


def backmap(
    structure: str | os.PathLike,
    topology: str | os.PathLike,
    output: str | os.PathLike,
    config: SamplerConfig = DEFAULTS,
    *,
    trajectory: str | os.PathLike | None = None,
    mapping: str | os.PathLike | list | tuple | None = None,
    model: str | os.PathLike = "sps-568",
    frames: slice = slice(None),
    overwrite: bool = False,
    progress: bool = True,
    allow_renamed: bool = False,
    mdp: str | os.PathLike | None = None,
) -> int:
    """Backmap CG frames (a structure, or a trajectory with it) with `model` as `config` says and
    write the atomistic frames (topology atom names and order, molecules whole, CG box kept);
    returns the number of frames. Without `config.temperature`, the frames are taken to be at the
    model's training temperature, and a line says so. `allow_renamed`: beads named otherwise than
    in the mapping only warned about (`structure.check_names`). `mdp`: the non-bonded settings of
    the prior and the last stage, and the topology's defines (default: those the model was trained
    with, `mdp.model_settings`)."""
    if torch.device(config.device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {config.device}: no CUDA device available")
    top = read_topology(topology, *topology_options(mdp))
    cg_map = read_mapping(mapping or None, top)
    net = load_model(model, config.device)
    settings = nonbonded_settings(mdp) if mdp is not None else model_settings(net.training)
    cutoff = settings.cutoff + NEIGHBOUR_SKIN  # the widest pair search: the last stage's
    source = FrameSource.of_mapping(
        cg_map, top, structure, trajectory, frames, cutoff=cutoff, allow_renamed=allow_renamed
    )
    path = resolve_model(model)
    net.check_system(top, cg_map, path)
    if config.scale_noise:
        noise_scale_for(net, config.temperature, path)  # the model must record its temperature
    kelvin = frames_temperature(net, config.temperature, config.thermal, path)
    system = prepare_system(net, top, cg_map, config.constrain, config.thermal, settings)
    pipeline = build_pipeline(config)
    out = FrameOutput(output, top.atom_names, top.residue_names, system_residue_numbers(top), system.levels, overwrite)
    per_frame = int(system.plan.step_length.sum()) * (1 + config.gibbs_sweeps)

    def sample(cg: Frame):
        from tqdm import tqdm

        with tqdm(
            total=per_frame, unit="atom", desc=f"frame {cg.step}", leave=False, disable=None if progress else True
        ) as bar:
            return backmap_frame(
                net,
                system,
                cg.positions,
                cg.box,
                config,
                seed=frame_seed(config.seed, cg.step),
                pipeline=pipeline,
                progress=_growing(bar),
            )

    note = None
    if config.temperature is None and config.thermal != "none":
        note = f"No --temperature: the CG frames are taken to be at the model's training temperature, {kelvin:g} K"
    return len(run_frames(source, sample, desc="backmap", output=out, progress=progress, note=note))


def _growing(bar) -> Callable[[int], None]:
    """A progress callback for a bar whose total covers the forward pass and sweeps: the repair
    rounds, of a size known only as they run, extend it."""

    def update(n: int) -> None:
        if bar.n + n > bar.total:
            bar.total = bar.n + n
        bar.update(n)

    return update
