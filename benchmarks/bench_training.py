"""Training speed on this machine: iterations per second and where the time goes.

    python benchmarks/bench_training.py [--threads 2] [--iterations 3] [--variants default,width8,...]

Each variant trains a few iterations on one sPS training snapshot (after one warm-up iteration)
and prints seconds per iteration, iterations per hour, and the share of time spent building
environments (gather), voxelising, in the generator, in the critic (forward and backward incl.
the gradient penalty) and in the energy prior. Figures are only meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import time
from pathlib import Path

import torch

from gmx_deepbackmap import training as T
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.networks import Critic, Generator, NetworkConfig
from gmx_deepbackmap.prior import LocalPrior
from gmx_deepbackmap.topology import read_topology

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps" / "train_t568"
VARIANTS = {
    "default": {},
    "width8": {"network": {"width": 8}},
    "width32": {"network": {"width": 32}},
    "teacher-forced": {"recurrent": False},
    "n_critic2": {"n_critic": 2},
    "channels-last": {"channels_last": True},
    "bf16": {"autocast_bf16": True},
}
PHASES = {  # profile entries (file:function) summed into each phase
    "gather": ["environment.py:gather"],
    "voxelise": ["voxels.py:voxelise", "voxels.py:coordinates_to_density"],
    "generator": ["networks.py:forward(Generator)"],
    "critic": ["networks.py:forward(Critic)", "networks.py:gradient_penalty"],
    "prior": ["prior.py:energies"],
    "backward": ["{method 'run_backward'"],
}


def trainer_for(variant: dict, threads: int) -> T.Trainer:
    torch.set_num_threads(threads)
    topology = read_topology(bundled_path("sps/topol.top"))
    mapping = read_mapping(None, topology)
    plan = T.plan_system(topology, mapping)
    network = dataclasses.replace(NetworkConfig(), **variant.get("network", {}), n_atom_types=4,
                                  n_env_channels=plan.layout.n_channels)
    options = {k: v for k, v in variant.items() if k != "network"}
    config = T.TrainConfig(aa=[str(DATA / "aa" / "90.gro")], cg=[str(DATA / "cg" / "90.gro")],
                           network=network, prior_ramp=(0, 1), **options)
    data = T.load_training_set(config, plan, mapping)
    torch.manual_seed(0)
    g, c = Generator(network), Critic(network)
    return T.Trainer(config, data, LocalPrior(topology, plan), g, c, torch.optim.Adam(g.parameters()),
                     torch.optim.Adam(c.parameters()), torch.Generator().manual_seed(0), torch.device("cpu"), step=1)


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    out = dict.fromkeys(PHASES, 0.0)
    for (file, _, func), (_, _, _, cumtime, _) in stats.stats.items():
        key = f"{Path(file).name}:{func}"
        for phase, names in PHASES.items():
            if any(key == n.split("(")[0] or key.startswith(n) for n in names):
                out[phase] += cumtime
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    print(f"{'variant':16s} {'s/iter':>8s} {'iter/h':>8s}  " + " ".join(f"{p:>9s}" for p in PHASES))
    for name in args.variants.split(","):
        trainer = trainer_for(VARIANTS[name], args.threads)
        trainer.train_step()  # warm-up
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _ in range(args.iterations):
            trainer.train_step()
        profiler.disable()
        seconds = (time.perf_counter() - start) / args.iterations
        shares = phase_times(pstats.Stats(profiler))
        total = sum(shares.values()) or 1.0
        print(f"{name:16s} {seconds:8.2f} {3600 / seconds:8.0f}  "
              + " ".join(f"{100 * v / total:8.0f}%" for v in shares.values()))


if __name__ == "__main__":
    main()
