"""Training DeepBackmap: a conditional WGAN-GP over voxelised local environments, with the
force-field prior (method.md section 5). Explicit loop, nanoGPT style: one function per phase.

One iteration: `n_critic` critic updates, each on a fresh batch, then one generator update.
A batch holds items (one bead's atom sequence in a forward or Gibbs context, in the bead's local
frame turned by a random angle about z) from one training snapshot. Sequences are recurrent:
the density generated for atom l joins the environment of atom l + 1.

Checkpoints hold everything to continue exactly (weights, their moving average, optimiser states,
RNG states, step); the model file (`model.save_model`) holds what inference needs, with the
averaged generator weights.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .environment import (
    FORWARD,
    GIBBS,
    Batch,
    Neighbourhood,
    SystemPlan,
    gather,
    near_owners,
    neighbourhood,
    plan_system,
)
from .errors import InputError, TrainingDiverged, read_toml
from .generation import environment_densities, reach, rollout, to_device
from .mapping import read_mapping
from .mdp import nonbonded_settings
from .model import new_model, plain_data, save_model
from .networks import Critic, Generator, NetworkConfig, gradient_penalty
from .prior import LocalPrior
from .stereo import learn_stereo
from .structure import atomic_output, read_frames
from .topology import read_topology
from .voxels import Grid, coordinates_to_density, density_to_coordinates

# "l1": the paper's per-item |E(reference) - E(generated)|. A generator that ignores its noise
# minimises it by placing every item at the median of its reference energies, below their mean
# (sPS: ring terms at 30-50 % of the reference). "energy": the energy score of two independent draws
# per item, E|E(x) - E(ref)| - E|E(x) - E(x')| / 2, a proper scoring rule: lowest when the draws
# follow the reference's conditional distribution, spread included (one extra generator pass).
PRIOR_SCORES = ("l1", "energy")


@dataclass
class TrainConfig:
    """Training settings; defaults are the paper's where it gives them (method.md)."""

    aa: list[str] = field(default_factory=list)  # AA structures: files, directories or globs
    cg: list[str] = field(default_factory=list)  # matching CG structures (paired by name); empty: map
    topology: str = ""
    mdp: str = ""  # .mdp whose non-bonded settings the prior uses (mdp.nonbonded_settings); empty: the defaults
    mapping: list[str] = field(default_factory=list)  # empty: bundled mappings
    temperature: float | None = None  # K, of the AA frames: the sampler's default (sampling.frames_temperature)
    output: str = "model.pt"
    workdir: str = "train-run"  # checkpoint.pt and log.csv
    grid_size: int = 8
    grid_length: float = 1.2  # nm, edge of the local cube (2 r_cut)
    sigma: float = 0.1  # nm, Gaussian width of a particle
    network: NetworkConfig = field(default_factory=NetworkConfig)
    steps: int = 38660
    batch_size: int = 36
    n_critic: int = 5
    lambda_gp: float = 0.1
    lambda_phi: float = 0.01  # weight of the energy prior once ramped up
    prior_ramp: tuple[int, int] = (6000, 10000)  # steps over which lambda_phi goes 0 -> lambda_phi
    prior_score: str = "l1"  # how the prior scores generated against reference energies: PRIOR_SCORES
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    ema_decay: float = 0.999  # model file: generator weights averaged over ~1/(1 - ema_decay) steps; 0: the last
    gibbs_fraction: float = 0.5  # share of items in the Gibbs context (all other atoms present)
    recurrent: bool = True  # generated atoms join the next step's environment (false: teacher forcing)
    channels_last: bool = False  # channels_last_3d: faster inference, but 8 % slower training (measured)
    autocast_bf16: bool = False  # bfloat16 autocast: for GPUs; 15-50x slower on CPUs without bf16 units
    end_weight: float = 3.0  # oversampling of chain-end beads
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self):
        if self.prior_score not in PRIOR_SCORES:  # checked here, so configs built in Python are too
            raise InputError(f"prior_score '{self.prior_score}': expected one of {', '.join(PRIOR_SCORES)}")
        if self.temperature is not None and not self.temperature > 0:
            raise InputError(f"temperature {self.temperature}: expected a positive number of kelvin")

    @property
    def grid(self) -> Grid:
        return Grid(self.grid_size, self.grid_length, self.sigma)

    @property
    def half_extent(self) -> float:
        """Particles farther than this from the bead along any local axis do not reach the grid."""
        return self.grid_length / 2 + 2 * self.sigma

    def lambda_phi_at(self, step: int) -> float:
        start, end = self.prior_ramp
        return self.lambda_phi * min(max((step - start) / max(end - start, 1), 0.0), 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        if not isinstance(data.get("network", {}), dict):
            raise InputError("network: expected a table ([network])")
        check_kinds(data, cls(), "")
        check_kinds(data.get("network", {}), NetworkConfig(), "network.")
        network = NetworkConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("network", {}).items()}
        )
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown training options: {', '.join(sorted(unknown))}")
        for key in ("prior_ramp", "betas"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(network=network, **data)


def check_kinds(data: dict, defaults, prefix: str) -> None:
    """Each value of a config table of the kind of its default in the dataclass `defaults`
    (integers, finite numbers, strings, flags, lists of strings, pairs of numbers); unknown keys
    are left to the caller. A value of the wrong kind is an `InputError` naming its key."""
    for key, value in data.items():
        if key == "network" or not hasattr(defaults, key):
            continue
        default = getattr(defaults, key)
        kind = _kind(default)
        if not _is_kind(value, default):
            raise InputError(f"{prefix}{key} = {value!r}: expected {kind}")


_KIND_NAMES = {bool: ("true or false", "flags"), int: ("an integer", "integers"), str: ("a string", "strings")}


def _kind(default) -> str:
    """What a value like `default` must be, in words."""
    if isinstance(default, (tuple, list)):
        element = _KIND_NAMES.get(type(default[0]) if default else str, ("", "finite numbers"))[1]
        return f"a list of {len(default)} {element}" if isinstance(default, tuple) else f"a list of {element}"
    return _KIND_NAMES.get(type(default), ("a finite number",))[0]


def _is_kind(value, default) -> bool:
    if isinstance(default, (tuple, list)):
        fits = isinstance(value, list) and (isinstance(default, list) or len(value) == len(default))
        return fits and all(_is_kind(v, default[0] if default else "") for v in value)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, str)):
        return type(value) is type(default)
    return isinstance(value, (int, float)) and math.isfinite(value)  # floats, and None (a temperature)


def read_config(path: str | os.PathLike) -> TrainConfig:
    """A training config from a TOML file (keys as in `TrainConfig`, network keys under [network])."""
    try:
        config = TrainConfig.from_dict(read_toml(path, "config"))
    except InputError as exc:
        raise InputError(exc.message, path) from None
    except TypeError as exc:  # a value of the wrong kind, e.g. a table where a number belongs
        raise InputError(f"invalid training options ({exc})", path) from None
    base = Path(path).parent  # paths in the file are relative to it
    config.aa = [str(base / p) for p in config.aa]
    config.cg = [str(base / p) for p in config.cg]
    config.mapping = [str(base / p) for p in config.mapping]
    for key in ("topology", "mdp", "output", "workdir"):
        value = getattr(config, key)
        if value:
            setattr(config, key, str(base / value))
    return config


# --------------------------------------------------------------------------- data


@dataclass
class Snapshot:
    """One training configuration on the device: atoms near their owner beads, CG, box."""

    positions: torch.Tensor
    cg: torch.Tensor
    box: torch.Tensor
    hood: Neighbourhood


class TrainingSet:
    """Snapshots of one system and the sampling of batch items from them."""

    def __init__(self, plan: SystemPlan, snapshots: list[Snapshot], end_weight: float):
        self.plan = plan
        self.snapshots = snapshots
        weights = np.where(chain_end_beads(plan)[plan.step_bead], end_weight, 1.0)
        self.step_weights = torch.as_tensor(weights / weights.sum())

    def sample(self, n: int, gibbs_fraction: float, gen: torch.Generator):
        """Random (snapshot, steps, contexts, angles) of n items."""
        snapshot = int(torch.randint(len(self.snapshots), (1,), generator=gen))
        steps = torch.multinomial(self.step_weights, n, replacement=True, generator=gen)
        context = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < gibbs_fraction, GIBBS, FORWARD)
        angle = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
        return snapshot, steps, context, angle


def chain_end_beads(plan: SystemPlan) -> np.ndarray:
    """Beads with fewer CG bonds than the typical bead of their type, the number of bonds that more
    than half of that type's beads have: chain ends of polymers (sPS: the first and last backbone
    bead of each chain). A type with no such majority has no ends: in a small molecule whose beads'
    bond counts tie (n-octane's four beads: 1, 2, 2, 1) no bead is rarer than another."""
    degree = np.bincount(plan.bead_bonds.reshape(-1), minlength=len(plan.bead_type))
    ends = np.zeros(len(degree), dtype=bool)
    for t in np.unique(plan.bead_type):
        of_type = plan.bead_type == t
        counts = np.bincount(degree[of_type])
        if 2 * counts.max() > of_type.sum():
            ends |= of_type & (degree < counts.argmax())
    return ends


def load_training_set(config: TrainConfig, plan: SystemPlan, mapping) -> TrainingSet:
    """Read the AA (and CG) training structures and precompute their neighbourhoods."""
    aa_files = expand_paths(config.aa, "aa")
    cg_files = pair_cg_files(aa_files, expand_paths(config.cg, "cg")) if config.cg else None
    snapshots = []
    for i, path in enumerate(aa_files):
        for frame in read_frames(path, n_atoms=plan.n_atoms):
            if cg_files is None:
                cg = mapping.cg_positions(frame.positions, frame.box)
            else:
                cg = read_frames(cg_files[i], n_atoms=len(plan.bead_type))[0].positions
            positions = near_owners(plan, frame.positions, cg, frame.box)
            hood = neighbourhood(plan, cg, frame.box, reach(config.half_extent))
            snapshots.append(
                Snapshot(torch.as_tensor(positions), torch.as_tensor(cg), torch.as_tensor(frame.box), hood)
            )
    return TrainingSet(plan, snapshots, config.end_weight)


def expand_paths(patterns: list[str], what: str) -> list[Path]:
    """Files named by paths, directories (their .gro files) or glob patterns, sorted."""
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            files += sorted(p.glob("*.gro"))
        elif any(c in pattern for c in "*?["):
            files += sorted(Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.anchor else pattern))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{what} training structure not found", p)
    if not files:
        raise InputError(f"no {what} training structures in {', '.join(patterns)}")
    return files


def pair_cg_files(aa: list[Path], cg: list[Path]) -> list[Path]:
    by_name = {p.name: p for p in cg}
    missing = [p.name for p in aa if p.name not in by_name]
    if missing:
        raise InputError(f"no CG structure with the name of AA structure(s) {', '.join(missing[:3])}")
    return [by_name[p.name] for p in aa]


# --------------------------------------------------------------------------- the loop


@dataclass
class Trainer:
    """Networks, optimisers, data and the step counter of one training run."""

    config: TrainConfig
    data: TrainingSet
    prior: LocalPrior
    generator: torch.nn.Module
    critic: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_c: torch.optim.Optimizer
    sampler: torch.Generator
    device: torch.device
    average: torch.nn.Module | None = None  # moving average of the generator weights
    step: int = 0

    @property
    def n_types(self) -> int:
        return self.config.network.n_atom_types

    def next_batch(self) -> tuple[Batch, torch.Tensor]:
        cfg = self.config
        snap_i, steps, context, angle = self.data.sample(cfg.batch_size, cfg.gibbs_fraction, self.sampler)
        snap = self.data.snapshots[snap_i]
        cpu_batch = gather(
            self.data.plan, snap.hood, snap.positions, snap.cg, snap.box, steps, context, angle, cfg.half_extent
        )
        batch = to_device(cpu_batch, self.device)
        static = environment_densities(batch, self.data.plan.layout.n_channels, cfg.grid)
        return batch, static

    def fake_and_real(self, batch: Batch, static: torch.Tensor):
        """Critic inputs of the real and the generated sequences (valid steps only), the generated
        local coordinates (B, L, 3) and the real sequence's environments (for `generate`)."""
        real = coordinates_to_density(batch.target, self.config.grid)
        env_real, _, _ = rollout(
            self.generator, static, batch, self.config.grid, self.n_types, self.config.network.noise_dim, real
        )
        m = batch.step_mask
        env_fake, fake, coords = self.generate(batch, static, env_real)
        types = torch.nn.functional.one_hot(batch.atom_types[m], self.n_types).to(static)
        real_in = (real[m][:, None], self.layout(env_real[m]))
        fake_in = (fake[:, None], self.layout(env_fake))
        return real_in, fake_in, types, coords, env_real

    def generate(self, batch: Batch, static: torch.Tensor, env_real: torch.Tensor):
        """One draw of the generator for every item: environments and densities of the valid steps
        and coordinates (B, L, 3).

        Recurrent (the paper): each generated atom joins the environment of the next one.
        Teacher-forced (`recurrent = false`): every step sees the real earlier atoms (`env_real`),
        so all steps of all sequences go through the generator in one batch.
        """
        cfg, m = self.config, batch.step_mask
        if cfg.recurrent:
            env_fake, fake, coords = rollout(
                self.generator, static, batch, cfg.grid, self.n_types, cfg.network.noise_dim
            )
            return env_fake[m], fake[m], coords
        types = torch.nn.functional.one_hot(batch.atom_types[m], self.n_types).to(static)
        z = torch.randn(int(m.sum()), cfg.network.noise_dim, device=static.device)
        fake = self.generator(self.layout(env_real[m]), z, types)[:, 0]
        coords = batch.target.new_zeros(batch.target.shape).masked_scatter(
            m[..., None], density_to_coordinates(fake, cfg.grid)
        )
        return env_real[m], fake, coords

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.config.channels_last else x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.autocast_bf16)

    def critic_step(self) -> dict[str, float]:
        batch, static = self.next_batch()
        with self.autocast():
            with torch.no_grad():
                real_in, fake_in, types, _, _ = self.fake_and_real(batch, static)
            wasserstein = self.critic(*real_in, types).mean() - self.critic(*fake_in, types).mean()
            penalty = gradient_penalty(self.critic, real_in, fake_in, types, lambda_gp=self.config.lambda_gp)
        loss = (-wasserstein + penalty).float()
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(self.critic)
        self.opt_c.step()
        return {"critic_loss": loss.item(), "wasserstein": wasserstein.item(), "gradient_penalty": penalty.item()}

    def generator_step(self) -> dict[str, float]:
        batch, static = self.next_batch()
        with self.autocast():
            real_in, fake_in, types, coords, env_real = self.fake_and_real(batch, static)
            adversarial = -self.critic(*fake_in, types).mean().float()
            draws = [coords]
            if self.config.prior_score == "energy":
                draws.append(self.generate(batch, static, env_real)[2])
        phi, terms = self.prior_loss(batch, [x.float() for x in draws])
        lam = self.config.lambda_phi_at(self.step)
        loss = adversarial + lam * phi if lam > 0 else adversarial
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(self.generator)
        self.opt_g.step()
        if self.average is not None:
            update_average(self.average, self.generator, self.config.ema_decay, self.step)
        return {
            "generator_loss": loss.item(),
            "adversarial": adversarial.item(),
            "prior": phi.item(),
            "lambda_phi": lam,
            **terms,
            **density_diagnostics(real_in[0], fake_in[0], coords, batch),
        }

    def prior_loss(self, batch: Batch, draws: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Phi: summed over terms, the mean |E(reference) - E(generated)| over the draws (B, L, 3)
        of the items, plus the centre-of-mass distance likewise; with two draws (`prior_score =
        "energy"`), less half the mean difference between them, the energy score (`PRIOR_SCORES`).
        Logged: the per-term differences from the reference and the draws' spread."""
        cpu = [x.to("cpu", torch.float64) for x in draws]
        target = batch.target.to("cpu", torch.float64)
        with torch.no_grad():
            reference = {**self.prior.energies(batch, target), "com": self.prior.centre_of_mass(batch, target)}
        generated = [{**self.prior.energies(batch, x), "com": self.prior.centre_of_mass(batch, x)} for x in cpu]

        def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b).norm(dim=-1).mean() if a.dim() > 1 else (a - b).abs().mean()

        diffs = {k: sum(distance(g[k], reference[k]) for g in generated) / len(generated) for k in reference}
        spread = {k: distance(generated[0][k], generated[1][k]) for k in reference} if len(generated) > 1 else {}
        phi = sum(diffs.values()) - 0.5 * sum(spread.values())
        log = {f"dE_{k}": v.item() for k, v in diffs.items() if k != "com"}
        if spread:
            log["prior_spread"] = sum(v.item() for k, v in spread.items() if k != "com")
        return phi.to(draws[0].device, torch.float32), log

    def train_step(self) -> dict[str, float]:
        for _ in range(self.config.n_critic):
            critic_log = self.critic_step()
        log = {**critic_log, **self.generator_step()}
        self.step += 1
        return log

    # ----------------------------------------------------------------------- checkpoints

    def checkpoint(self) -> dict:
        return {
            "step": self.step,
            "generator": self.generator.state_dict(),
            **({"generator_average": self.average.state_dict()} if self.average is not None else {}),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "rng": _gather_rng(self.sampler),
            "config": plain_data(self.config.to_dict()),
        }

    def restore(self, state: dict) -> None:
        self.step = state["step"]
        self.generator.load_state_dict(state["generator"])
        if self.average is not None:  # a run begun without averaging starts it from its weights
            self.average.load_state_dict(state.get("generator_average", state["generator"]))
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        torch_state, sampler_state = state["rng"][_rank()]
        torch.set_rng_state(torch_state)
        self.sampler.set_state(sampler_state)


def density_diagnostics(real: torch.Tensor, fake: torch.Tensor, coords: torch.Tensor, batch: Batch) -> dict:
    """How far the generated densities are from single atoms, for the log.

    `density_mass`: generated over real density summed over the batch (1 for atom-like Gaussians;
    an untrained generator's diffuse output is far above 1, and its centre of mass is pulled towards
    the bead). `position_error`: mean distance (nm) of generated atoms from the reference ones. The
    critic's Wasserstein estimate can be small while both are still large.
    """
    with torch.no_grad():
        error = (coords.float() - batch.target.float()).norm(dim=-1)[batch.step_mask]
        return {"density_mass": (fake.float().sum() / real.float().sum()).item(), "position_error": error.mean().item()}


def _average_gradients(module: torch.nn.Module) -> None:
    """Data parallelism, explicitly: average gradients over processes (works with the double
    backward of the gradient penalty, which DistributedDataParallel's hooks do not)."""
    if not torch.distributed.is_initialized():
        return
    world = torch.distributed.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _gather_rng(sampler: torch.Generator) -> list:
    """RNG states of every process (so a resumed run continues exactly)."""
    state = (torch.get_rng_state(), sampler.get_state())
    if not torch.distributed.is_initialized():
        return [state]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """average <- d * average + (1 - d) * model, with d = min(decay, (1 + step) / (10 + step)).

    Averaged generator weights (Polyak/EMA, as in most GAN work) smooth the step-to-step
    oscillation of adversarial training out of the weights a model file keeps; the step-dependent d
    lets an early average forget the random initial weights.
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for a, p in zip(average.parameters(), model.parameters(), strict=True):
            a.lerp_(p, 1 - d)
        for a, b in zip(average.buffers(), model.buffers(), strict=True):
            a.copy_(b)


# --------------------------------------------------------------------------- the driver


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Path | None:
    """Train (or resume from `workdir/checkpoint.pt`) and write the model file; returns its path
    (None when stopped early, or in processes other than the first). With `config.steps` at or
    below the checkpoint's step nothing is trained: the model of the checkpoint is written.

    Under `torchrun` every process trains on its own batches and gradients are averaged (gloo
    on CPU, NCCL on CUDA); process 0 writes checkpoints, the log and the model. SIGTERM (as sent
    by batch schedulers before pre-emption) saves a checkpoint and stops cleanly.
    """
    device = _init_distributed(config.device)
    rank = _rank()
    topology = read_topology(config.topology)
    settings = nonbonded_settings(config.mdp or None)
    mapping = read_mapping(config.mapping or None, topology)
    plan = plan_system(topology, mapping)
    config.network = dataclasses.replace(
        config.network,
        n_atom_types=len(plan.layout.atom_types),
        n_env_channels=plan.layout.n_channels,
        grid_size=config.grid_size,
    )
    data = load_training_set(config, plan, mapping)

    torch.manual_seed(config.seed)  # identical initial weights in every process
    generator, critic = Generator(config.network).to(device), Critic(config.network).to(device)
    if config.channels_last:
        generator, critic = (m.to(memory_format=torch.channels_last_3d) for m in (generator, critic))
    trainer = Trainer(
        config=config,
        data=data,
        prior=LocalPrior(topology, plan, settings),
        generator=generator,
        critic=critic,
        opt_g=torch.optim.Adam(generator.parameters(), config.learning_rate, betas=config.betas),
        opt_c=torch.optim.Adam(critic.parameters(), config.learning_rate, betas=config.betas),
        sampler=torch.Generator().manual_seed(config.seed + 7919 * rank),
        device=device,
        average=copy.deepcopy(generator).requires_grad_(False) if config.ema_decay > 0 else None,
    )
    torch.manual_seed(config.seed + 104729 * (rank + 1))  # noise: different in every process
    workdir = Path(config.workdir)
    checkpoint = workdir / "checkpoint.pt"
    if checkpoint.is_file():
        # on the CPU first: RNG states must stay there, and load_state_dict moves the weights and
        # optimiser moments to the device, so a run can resume on another device than it began
        trainer.restore(torch.load(checkpoint, map_location="cpu", weights_only=True))
    stop = _stop_on_sigterm()
    log = TrainingLog(workdir / "log.csv") if rank == 0 else None
    bar = _progress(progress and rank == 0, trainer.step, config.steps)
    while trainer.step < config.steps and not _agreed(stop["now"]):
        row = trainer.train_step()
        _check_finite(row, trainer.step, checkpoint)
        bar.update(1)
        if trainer.step % config.log_every == 0 or trainer.step == config.steps:
            bar.set_postfix(
                critic=f"{row['critic_loss']:.3g}",
                W=f"{row['wasserstein']:.3g}",
                prior=f"{row['prior']:.3g}",
                refresh=False,
            )
            if log:
                log.write(trainer.step, row)
        if trainer.step % config.checkpoint_every == 0:
            _save_checkpoint(trainer, checkpoint)
    bar.close()
    _save_checkpoint(trainer, checkpoint)
    if trainer.step < config.steps:
        print(f"Stopped by SIGTERM at step {trainer.step}; rerun the same command to resume.")
    if rank != 0 or trainer.step < config.steps:
        return None
    weights = trainer.average if trainer.average is not None else generator
    stereo = learn_stereo(topology, [(s.positions, s.box) for s in data.snapshots])
    # steps: those trained, more than asked when --steps is below the checkpoint's (the model of an unfinished run)
    recorded = {
        **config.to_dict(),
        "steps": trainer.step,
        "nonbonded": settings.as_dict(),
    }  # nonbonded: mdp.model_settings
    model = new_model(
        weights, config.network, config.grid, config.half_extent, plan, topology, mapping, recorded, stereo
    )
    return save_model(model, config.output, overwrite=overwrite)


def _check_finite(row: dict[str, float], step: int, checkpoint: Path) -> None:
    """Stop before a diverged step can overwrite the last good checkpoint."""
    bad = [name for name in ("critic_loss", "generator_loss") if not math.isfinite(row[name])]
    if bad:
        raise TrainingDiverged(
            f"step {step}: {' and '.join(bad)} not finite; training stopped, {checkpoint} "
            "(the last finite state) is kept"
        )


class TrainingLog:
    """Appends one CSV row per logged step (resumed runs continue the same file; columns that a
    newer version logs are added to the header, empty in older rows)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None
        if path.is_file():
            with path.open() as f:
                self.columns = next(csv.reader(f), None)

    def write(self, step: int, row: dict[str, float]) -> None:
        values = {"step": step, "time": round(time.time(), 3), **row}
        new = self.columns is None
        if new:
            self.columns = list(values)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif set(values) - set(self.columns):
            self._add_columns([k for k in values if k not in self.columns])
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(values)

    def _add_columns(self, names: list[str]) -> None:
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        self.columns += names
        with atomic_output(self.path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)


def _save_checkpoint(trainer: Trainer, path: Path) -> None:
    state = trainer.checkpoint()  # collective: every process takes part
    if _rank() == 0:
        with atomic_output(path, overwrite=True) as tmp:
            torch.save(state, tmp)


def _init_distributed(device: str) -> torch.device:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available")
    return torch.device(device)


def _agreed(flag: bool) -> bool:
    """True if any process says so: every process must leave the loop at the same step."""
    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([float(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _stop_on_sigterm() -> dict[str, bool]:
    stop = {"now": False}

    def handler(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    return stop


def _progress(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True)
