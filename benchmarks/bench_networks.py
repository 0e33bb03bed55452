"""Timings of the DeepBackmap networks and the voxeliser on one device.

Per configuration (width, memory layout, dtype, torch.compile) at batch 64:
  critic step    = generator forward (no grad) + critic on real and fake + gradient penalty + backward
  generator step = generator forward + critic forward + backward through both
and generator inference per sample at batch 512. Then voxelisation of B=512 sets of M=200 particles
in C=30 channels (20 % padding). Times are medians over --repeats after warm-up.

    python benchmarks/bench_networks.py [--device cpu] [--threads 2] [--repeats 5] [--widths 16 32]
        [--dtypes float32 bfloat16] [--no-compile] [--clock wall|cpu]

bfloat16 autocast needs native CPU support (AVX512-BF16/AMX); on AVX2-only CPUs it is emulated and
15-50x slower than float32 (measured on an AVX2 EPYC).

torch.compile cannot differentiate twice (create_graph), so the gradient penalty runs the eager critic.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch

from gmx_deepbackmap.networks import Critic, Generator, NetworkConfig, gradient_penalty
from gmx_deepbackmap.voxels import Grid, coordinates_to_density, voxelise


def timed(fn: Callable[[], object], args: argparse.Namespace, warmup: int = 2) -> float:
    """Median time of fn() in seconds, wall clock or process CPU time (--clock)."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = []
    for i in range(warmup + args.repeats):
        start = clock()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(clock() - start)
    return statistics.median(times)


def inputs(config: NetworkConfig, batch: int, device: torch.device, layout: torch.memory_format):
    """Random environment, atom types and real single-atom densities."""
    d = config.grid_size
    env = torch.rand(batch, config.n_env_channels, d, d, d, device=device).to(memory_format=layout)
    types = torch.eye(config.n_atom_types, device=device)[torch.randint(config.n_atom_types, (batch,))]
    real = coordinates_to_density((torch.rand(batch, 1, 3, device=device) - 0.5) * 0.8, Grid(d))
    return env, types, real.to(memory_format=layout)


def bench_config(
    args: argparse.Namespace, width: int, layout: torch.memory_format, dtype: torch.dtype, compile_: bool
) -> list[float]:
    """[critic step s, generator step s, inference s/sample] for one configuration."""
    device = torch.device(args.device)
    torch._dynamo.reset()  # compiled code is cached per forward(), across instances and configurations
    config = NetworkConfig(width=width)
    generator = Generator(config).to(device, memory_format=layout)
    critic = Critic(config).to(device, memory_format=layout)
    gen_fn, critic_fn = (torch.compile(generator), torch.compile(critic)) if compile_ else (generator, critic)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    env, types, real = inputs(config, 64, device, layout)

    def noise(batch: int) -> torch.Tensor:
        return torch.randn(batch, config.noise_dim, device=device)

    def critic_step() -> None:
        critic.zero_grad(set_to_none=True)
        with autocast:
            with torch.no_grad():
                fake = gen_fn(env, noise(64), types)
            loss = critic_fn(fake, env, types).mean() - critic_fn(real, env, types).mean()
            loss = loss + gradient_penalty(critic, real, fake, env, types)
        loss.backward()

    def generator_step() -> None:
        generator.zero_grad(set_to_none=True)
        with autocast:
            loss = -critic_fn(gen_fn(env, noise(64), types), env, types).mean()
        loss.backward()

    env_inf, types_inf, _ = inputs(config, 512, device, layout)

    @torch.inference_mode()
    def infer() -> None:
        with autocast:
            gen_fn(env_inf, noise(512), types_inf)

    return [
        timed(critic_step, args),
        timed(generator_step, args),
        timed(infer, args) / 512,
    ]


def bench_voxelise(args: argparse.Namespace) -> float:
    """Seconds per voxelise call at B=512, M=200, C=30."""
    device = torch.device(args.device)
    positions = (torch.rand(512, 200, 3, device=device) - 0.5) * 1.6
    channels = torch.randint(0, 30, (512, 200), device=device)
    mask = torch.rand(512, 200, device=device) > 0.2
    return timed(lambda: voxelise(positions, channels, 30, Grid(), mask), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="bfloat16 = autocast")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, summed over threads (steadier on a busy machine with --threads 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"device {args.device}, {args.threads} threads, {args.clock} clock, torch {torch.__version__} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), batch 64 (inference 512)"
    )
    print(
        f"{'width':>5} {'layout':>13} {'dtype':>8} {'compile':>7} {'critic step':>12} {'gen step':>9} "
        f"{'G+C total':>10} {'infer/sample':>13}"
    )
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}
    compiles = [False] if args.no_compile else [False, True]
    dtypes = [getattr(torch, d) for d in args.dtypes]
    rows = itertools.product(compiles, args.widths, layouts.items(), dtypes)
    for compile_, width, (name, layout), dtype in rows:
        row = f"{width:>5} {name:>13} {str(dtype)[6:]:>8} {'on' if compile_ else 'off':>7}"
        try:
            critic_s, gen_s, infer_s = bench_config(args, width, layout, dtype, compile_)
        except Exception as exc:  # torch.compile may be unavailable (no compiler, old torch, ...)
            print(f"{row} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            continue
        print(
            f"{row} {critic_s * 1e3:>9.0f} ms {gen_s * 1e3:>6.0f} ms {(critic_s + gen_s) * 1e3:>7.0f} ms "
            f"{infer_s * 1e3:>10.3f} ms"
        )
    print(f"voxelise B=512 M=200 C=30: {bench_voxelise(args) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
