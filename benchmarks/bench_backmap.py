"""DeepBackmap on held-out sPS frames: issue #4's bar (quality against the AA reference) and speed.

    python benchmarks/bench_backmap.py [--model sps-568] [--frames 0:80:8] [--baseline-dir bench-out]
        [--out bench-out] [--device cpu] [--threads 2] [--orientations K] [--gibbs-sweeps N] [--repair-rounds R]
        [--ranking environment|all] [--thermal groups|hydrogens|planar-hydrogens|none] [--thermal-sweeps N]
        [--precision auto|float32|bfloat16] [--scale-noise true]
        [--sets t568 t313]

For t568 and t313: takes the selected frames of cg.xtc/aa.xtc (at 568 K without the 7 frames that
are also training snapshots), backmaps them with `gmx_deepbackmap.sampling.backmap` (the `SamplerConfig` defaults
unless its options, --orientations, --gibbs-sweeps, ..., say otherwise; each
set at its own temperature, `SamplerConfig(temperature=568 or 313)`; --scale-noise true: the generator's
noise scaled to it too), runs `gmx-dbm
compare` of the result (and of `baseline-<T>.xtc` from bench_baseline.py, when --baseline-dir has it
for the same frames) against the reference frames, and prints one table per temperature: JSD and W1
per observable against the published DeepBackmap figures, frame-mean energies per term as % of the
reference, bond-length RMS deviation, clashes, chirality flips, and speed (seconds per frame, frames
per minute, atoms per second). A last column scores the held-out reference frames halfway between
the selected ones ("reference, other frames": 4:80:8 for 0:80:8) the same way: the sampling noise
of that many frames, below which a figure is not resolved. Writes the backmapped frames, the
compare reports (`compare-<T>/`) and `bench_backmap.md` to --out.
The frames are backmapped in resumable chunks (`gmx_deepbackmap.chunks`, --chunk-size frames each)
under --out, so a long bench (all held-out frames: --frames 0:80:1) that is stopped resumes where
it was when rerun with the same arguments; the speed is the wall time over the frames backmapped
by all runs of it (`speed-<T>.json`). Speed is only meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from pathlib import Path

import torch

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.chunks import backmap_in_chunks, merge_chunks
from gmx_deepbackmap.config import DEFAULTS, SamplerConfig
from gmx_deepbackmap.report import compare, markdown_table
from gmx_deepbackmap.sampling import uses_bfloat16
from gmx_deepbackmap.structure import iter_frames, load_universe, parse_frames, write_frames

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
TEMPERATURES = {"t568": 568.0, "t313": 313.0}  # K
TRAINING_FRAMES = {"t568": {9, 19, 41, 55, 62, 70, 76}, "t313": set()}  # ../shared/data/sps/README.md
# The structures published with the paper, scored with the definitions of issue #4 (JSD, natural log).
PUBLISHED = {
    "t568": {
        "backbone C-C-C angle": 0.019,
        "backbone C-C-C-C dihedral": 0.0021,
        "ring C-C-C-C improper": 0.072,
        "LJ energy per molecule": 0.067,
        "non-bonded C-C pair distances": 0.0067,
    },
    "t313": {
        "backbone C-C-C angle": 0.041,
        "backbone C-C-C-C dihedral": 0.0039,
        "ring C-C-C-C improper": 0.022,
        "LJ energy per molecule": 0.072,
        "non-bonded C-C pair distances": 0.0091,
    },
}
TERMS = ("Bond", "Angle", "Proper Dih.", "Improper Dih.", "LJ (SR)", "Coulomb (SR)")
MODEL = "DeepBackmap"
FLOOR = "reference, other frames"


def other_frames(frames: slice) -> slice | None:
    """The frames halfway between the selected ones (0:80:8 -> 4:80:8), None if they leave no gap.
    Scored against the reference, they show how far two sets of this many reference frames differ
    by sampling alone: smaller differences are not resolved."""
    step = frames.step or 1
    first = (frames.start or 0) + step // 2
    return slice(first, frames.stop, step) if step > 1 and (frames.stop is None or first < frames.stop) else None


def held_out(universe, name: str, frames: slice):
    """The selected frames of a t568/t313 trajectory that are not training snapshots."""
    indices = range(len(universe.trajectory))[frames]
    return (frame for i, frame in zip(indices, iter_frames(universe, frames)) if i not in TRAINING_FRAMES[name])


def held_out_frames(name: str, frames: slice, out: Path, tag: str = "heldout") -> tuple[Path, Path, int]:
    """CG and AA trajectories of the selected frames that are not training snapshots."""
    cg = load_universe(DATA / "cg.gro", DATA / name / "cg.xtc")
    aa = load_universe(DATA / "aa.gro", DATA / name / "aa.xtc")
    paths = out / f"{tag}-{name}-cg.xtc", out / f"{tag}-{name}-aa.xtc"
    for universe, path in zip((cg, aa), paths):
        kept = list(held_out(universe, name, frames))
        atoms = universe.atoms
        write_frames(path, atoms.names, atoms.resnames, atoms.resids, kept, overwrite=True)
    return *paths, len(kept)


def add_sampler_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The `SamplerConfig` fields (but `skip`) as options, with the package's defaults."""
    hints = typing.get_type_hints(SamplerConfig)
    for field in dataclasses.fields(SamplerConfig):
        if field.name in skip:
            continue
        option, default = f"--{field.name.replace('_', '-')}", getattr(DEFAULTS, field.name)
        if hints[field.name] is bool:
            parser.add_argument(option, type=lambda v: v.lower() in ("1", "true", "yes"), default=default)
        else:
            kind = next(t for t in typing.get_args(hints[field.name]) or (hints[field.name],) if t is not type(None))
            parser.add_argument(option, type=kind, default=default, choices=field.metadata.get("choices"))


def sampler_config(args: argparse.Namespace, **fixed) -> SamplerConfig:
    """The `SamplerConfig` of parsed `add_sampler_arguments` options, with `fixed` fields set."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplerConfig) if hasattr(args, f.name)}
    return SamplerConfig(**{**given, **fixed})


def backmap_resumably(cg: Path, result: Path, tag: str, chunk_size: int, config: SamplerConfig, model: str) -> float:
    """Backmap the frames of cg into result through a chunk folder beside it, skipping the chunks a
    stopped run finished; returns the wall seconds per frame over all runs (kept in speed-<tag>.json)."""
    work, speed = result.parent / f"chunks-{tag}", result.parent / f"speed-{tag}.json"
    spent = json.loads(speed.read_text()) if speed.is_file() else {"seconds": 0.0, "frames": 0}
    start = time.perf_counter()
    done = backmap_in_chunks(
        DATA / "cg.gro", bundled_path("sps/topol.top"), work, config, chunk_size=chunk_size, trajectory=cg, model=model
    )
    if done:
        spent = {"seconds": spent["seconds"] + time.perf_counter() - start, "frames": spent["frames"] + done}
        speed.write_text(json.dumps(spent))
    merge_chunks(work, result, overwrite=True)
    return spent["seconds"] / spent["frames"] if spent["frames"] else float("nan")


def bar_table(report: dict, name: str, seconds_per_frame: float, n_atoms: int) -> str:
    """Markdown table: the bar of issue #4 against what each set reaches."""
    sets = list(report["sets"])
    obs, energies = report["observables"], report["energies"]["terms"]
    table = []
    for key, published in PUBLISHED[name].items():
        score = "l1" if obs[key]["kind"] == "histogram" else "jsd"
        table.append(
            [f"{key}: {score.upper()} (W1)", f"<= {published}"]
            + [f"{obs[key]['sets'][s][score]:.4f} ({obs[key]['sets'][s]['w1']:.3g})" for s in sets]
        )
    for term in TERMS:
        ref = energies[term]["reference"]["mean"]
        table.append(
            [f"{term}: mean, % of reference {ref:.5g} kJ/mol", "90-110 %"]
            + [f"{100 * energies[term]['sets'][s]['mean'] / ref:.1f} %" for s in sets]
        )
    table.append(
        ["bond length RMS deviation from b0 (nm)", "<= 0.002"]
        + [f"{obs['bond length RMS deviation']['sets'][s]['mean']:.4f}" for s in sets]
    )
    table.append(["clashes per frame (< 0.1 nm)", "0"] + [f"{obs['clashes']['sets'][s]['mean']:.2f}" for s in sets])
    centres = obs["chirality"]["reference"]["centres"]
    table.append(
        [f"chirality flips per frame (of {centres})", "0"]
        + [f"{obs['chirality']['sets'][s]['flips_per_frame']:.2f}" for s in sets]
    )
    table.append(
        ["ring planarity, max (nm)", f"ref {obs['ring planarity']['reference']['max']:.4f}"]
        + [f"{obs['ring planarity']['sets'][s]['max']:.4f}" for s in sets]
    )
    rate = f"{60 / seconds_per_frame:.2f} frames/min, {n_atoms / seconds_per_frame:.0f} atoms/s"
    speed = f"{seconds_per_frame:.1f} s ({rate})"
    table.append(["wall time per frame", "<= 60 s on 2 cores", speed] + [""] * (len(sets) - 1))
    return markdown_table(["", "bar", *sets], table)


def publish(out: Path, stem: str, text: list[str], name: str, report: dict) -> None:
    """Print the newest table; keep the report of set `name` as <stem>-<name>.json and every table
    so far as <stem>.md in `out`."""
    print(text[-1], flush=True)
    (out / f"{stem}-{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text("\n\n".join(text) + "\n")
    print(f"written to {out / f'{stem}.md'}\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sps-568", help="bundled model name or model file")
    parser.add_argument("--frames", default="0:80:8", help="b:e:s of the 78 CG/AA frames (default 0:80:8)")
    parser.add_argument("--baseline-dir", help="folder with baseline-t568.xtc/baseline-t313.xtc of the same frames")
    parser.add_argument("--out", default="bench-out", help="folder for frames, reports and the table")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_sampler_arguments(parser, skip=("temperature",))  # each set is sampled at its own temperature
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=TEMPERATURES,
        default=list(TEMPERATURES),
        help="temperatures to bench (default both)",
    )
    parser.add_argument("--chunk-size", type=int, default=4, help="frames per resumable chunk (default 4)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    top = bundled_path("sps/topol.top")
    n_atoms = len(load_universe(DATA / "aa.gro").atoms)
    text = [
        f"model {args.model}, frames {args.frames}, {args.orientations} orientations, {args.gibbs_sweeps} Gibbs "
        f"sweeps, {args.repair_rounds} repair rounds, ranking {args.ranking}, thermal "
        f"{args.thermal} ({args.thermal_sweeps} sweeps), device {args.device}, precision {args.precision} "
        f"({'bfloat16' if uses_bfloat16(args.precision, args.device) else 'float32'}), "
        f"{args.threads} threads, seed {args.seed}" + (", noise scaled to each temperature" if args.scale_noise else "")
    ]
    for name in args.sets:
        cg, aa, n = held_out_frames(name, parse_frames(args.frames), out)
        result = out / f"dbm-{name}.xtc"
        tag = f"{name}-{args.frames.replace(':', '_')}"
        config = sampler_config(args, temperature=TEMPERATURES[name])
        seconds = backmap_resumably(cg, result, tag, args.chunk_size, config, args.model)
        sets = {MODEL: result}
        baseline = Path(args.baseline_dir or out) / f"baseline-{name}.xtc"
        if baseline.is_file() and len(load_universe(DATA / "aa.gro", baseline).trajectory) == n:
            sets["baseline"] = baseline
        floor = other_frames(parse_frames(args.frames))
        if floor is not None:
            sets[FLOOR] = held_out_frames(name, floor, out, tag="other")[1]
        report = compare(DATA / "aa.gro", top, aa, sets, out / f"compare-{name}", overwrite=True)
        table = bar_table(report, name, seconds, n_atoms)
        text.append(f"## {name[1:]} K: {n} held-out frames\n\n{table}")
        publish(out, "bench_backmap", text, name, report)


if __name__ == "__main__":
    main()
