"""Training speed on this machine: iterations per second and where the time goes.

    python benchmarks/bench_training.py [--threads 2] [--iterations 3] [--variants default,width8,...]

Each variant trains a few iterations on one sPS training snapshot (after one warm-up iteration)
and prints seconds per iteration, iterations per hour, and the share of wall time spent building
environments (gather), voxelising, in generator and critic forward passes (the critic's incl. the
gradient penalty's double backward), in the energy prior and in backward passes. Figures are only
meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "contiguous": {"channels_last": False},
    "batch12": {"batch_size": 12},
    "bf16": {"autocast_bf16": True},
}
PHASES = ("gather", "voxelise", "generator", "critic", "prior", "backward")


class PhaseTimer:
    """Wall time per phase, exclusive: time inside a nested timed call counts for the inner phase."""

    def __init__(self):
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.stack: list[list] = []

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            self.stack.append([phase, 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                _, inner = self.stack.pop()
                spent = time.perf_counter() - start
                self.totals[phase] += spent - inner
                if self.stack:
                    self.stack[-1][1] += spent

        setattr(owner, name, timed)


def instrument() -> PhaseTimer:
    timer = PhaseTimer()
    timer.wrap(T, "gather", "gather")
    timer.wrap(T, "environment_densities", "voxelise")
    timer.wrap(T, "coordinates_to_density", "voxelise")
    timer.wrap(Generator, "forward", "generator")
    timer.wrap(Critic, "forward", "critic")
    timer.wrap(T, "gradient_penalty", "critic")
    timer.wrap(LocalPrior, "energies", "prior")
    timer.wrap(torch.Tensor, "backward", "backward")
    return timer


def trainer_for(variant: dict, threads: int) -> T.Trainer:
    torch.set_num_threads(threads)
    topology = read_topology(bundled_path("sps/topol.top"))
    mapping = read_mapping(None, topology)
    plan = T.plan_system(topology, mapping)
    network = dataclasses.replace(
        NetworkConfig(), **variant.get("network", {}), n_atom_types=4, n_env_channels=plan.layout.n_channels
    )
    options = {k: v for k, v in variant.items() if k != "network"}
    config = T.TrainConfig(
        aa=[str(DATA / "aa" / "90.gro")],
        cg=[str(DATA / "cg" / "90.gro")],
        network=network,
        prior_ramp=(0, 1),
        **options,
    )
    data = T.load_training_set(config, plan, mapping)
    torch.manual_seed(0)
    g, c = Generator(network), Critic(network)
    return T.Trainer(
        config,
        data,
        LocalPrior(topology, plan),
        g,
        c,
        torch.optim.Adam(g.parameters()),
        torch.optim.Adam(c.parameters()),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        step=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    print(f"{'variant':16s} {'s/iter':>8s} {'iter/h':>8s}  " + " ".join(f"{p:>9s}" for p in PHASES))
    timer = instrument()
    for name in args.variants.split(","):
        trainer = trainer_for(VARIANTS[name], args.threads)
        trainer.train_step()  # warm-up
        timer.totals = dict.fromkeys(PHASES, 0.0)
        start = time.perf_counter()
        for _ in range(args.iterations):
            trainer.train_step()
        total = time.perf_counter() - start
        seconds = total / args.iterations
        shares = [100 * timer.totals[p] / total for p in PHASES]
        print(
            f"{name:16s} {seconds:8.2f} {3600 / seconds:8.0f}  "
            + " ".join(f"{v:8.0f}%" for v in shares)
            + f"  (other {100 - sum(shares):.0f}%)",
            flush=True,
        )


if __name__ == "__main__":
    main()
