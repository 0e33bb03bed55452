"""A model on the held-out frames of a small-molecule liquid (cumene, octane), against the reference
and the geometric baseline on the same frames: the bar of issue 34.

    python benchmarks/bench_liquids.py cumene [--model cumene-350] [--temperature 350] [--out bench-out]
        [--threads 2] [--no-baseline] [sampler options of gmx-dbm backmap: --orientations, ...]

For the liquid's `heldout/{aa,cg}/*.gro` pairs (../shared/data/<liquid>): backmaps the CG frames
with `gmx_deepbackmap.sampling.backmap` and with the baseline (`gmx-dbm baseline`), runs `compare`
of both against the reference AA frames with the liquid's `rerun.mdp` (every angle, proper and
improper dihedral type of the topology, the heavy-atom pair distances between molecules, per-molecule
LJ, GROMACS energies per term, bond RMS, clashes) and prints one table: JSD and W1 per type, the
pair distances' L1 against the baseline's, frame-mean energies per term as % of the reference,
bond RMS, clashes, the RMS distance between the CG input and the output mapped back to CG, and
seconds per frame. Writes the frames, the compare report and `bench_liquids-<liquid>.md` to --out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_backmap import add_sampler_arguments, sampler_config  # the script's folder is on sys.path

from gmx_deepbackmap.baseline import baseline
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.report import compare, markdown_table
from gmx_deepbackmap.sampling import backmap
from gmx_deepbackmap.structure import load_universe, read_frames, write_frames
from gmx_deepbackmap.topology import read_topology

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TERMS = ("G96Bond", "G96Angle", "Angle", "Proper Dih.", "Ryckaert-Bell.", "Improper Dih.", "LJ (SR)", "Coulomb (SR)")
ENERGY_BAR = 0.10  # frame means within 10 % of the reference
RDF_BAR = 1.10  # pair-distance L1 at most 10 % above the baseline's
CG_BAR = 0.02  # nm, RMS distance between the CG input and the output mapped back
SPEED_BAR = 60.0  # s per frame on 2 cores


@dataclass(frozen=True)
class HeldOut:
    """A liquid's held-out pairs as trajectories, with the structures that name their atoms."""

    aa_structure: Path
    cg_structure: Path
    aa: Path
    cg: Path
    n: int


def held_out(liquid: Path, out: Path) -> HeldOut:
    """The liquid's `heldout/{aa,cg}/*.gro` pairs joined into trajectories in `out`."""
    files = {kind: sorted((liquid / "heldout" / kind).glob("*.gro")) for kind in ("aa", "cg")}
    for kind, paths in files.items():
        atoms = load_universe(paths[0]).atoms
        frames = [read_frames(path)[0] for path in paths]
        write_frames(out / f"heldout-{kind}.xtc", atoms.names, atoms.resnames, atoms.resids, frames, overwrite=True)
    return HeldOut(files["aa"][0], files["cg"][0], out / "heldout-aa.xtc", out / "heldout-cg.xtc", len(files["aa"]))


def cg_rms(output: Path, data: HeldOut, mapping) -> float:
    """RMS distance (nm) between the CG frames and the output frames mapped back onto beads."""
    squares = []
    for aa, beads in zip(read_frames(data.aa_structure, output), read_frames(data.cg_structure, data.cg)):
        mapped = mapping.cg_positions(aa.positions, aa.box)
        d = minimum_image(torch.as_tensor(mapped - beads.positions), torch.as_tensor(aa.box))
        squares.append(d.square().sum(-1).numpy())
    return float(np.sqrt(np.mean(np.concatenate(squares))))


def timed(run, n: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / n


def table(report: dict, sets: list[str], cg_distance: dict, seconds: dict) -> str:
    """One row per observable and bar; bold where a set meets its bar."""
    obs, energies = report["observables"], report["energies"]["terms"]
    rows = []
    for name, entry in obs.items():
        if entry["kind"] != "distribution" or not name.startswith(("angle ", "dihedral ", "improper ")):
            continue
        scores = {s: entry["sets"][s]["jsd"] for s in sets}
        best = "baseline" not in scores or scores.get("DeepBackmap", np.inf) < scores["baseline"]
        rows.append(
            [f"{name}: JSD (W1)", "< baseline"]
            + [
                f"{'**' if s != 'DeepBackmap' or best else ''}{scores[s]:.4f}"
                f"{'**' if s != 'DeepBackmap' or best else ''} ({entry['sets'][s]['w1']:.3g})"
                for s in sets
            ]
        )
    pairs = next(n for n in obs if n.endswith("pair distances"))
    l1 = {s: obs[pairs]["sets"][s]["l1"] for s in sets}
    rows.append([f"{pairs}: L1", f"<= {RDF_BAR:g} x baseline"] + [f"{l1[s]:.4f}" for s in sets])
    lj = "LJ energy per molecule"
    rows.append([f"{lj}: JSD", ""] + [f"{obs[lj]['sets'][s]['jsd']:.4f}" for s in sets])
    for term in TERMS:
        if term in energies:
            ref = energies[term]["reference"]["mean"]
            rows.append(
                [f"{term}: % of reference {ref:.5g} kJ/mol", f"within {100 * ENERGY_BAR:g} %"]
                + [f"{100 * energies[term]['sets'][s]['mean'] / ref:.1f} %" for s in sets]
            )
    rows.append(
        ["bond RMS from b0 (nm)", ""] + [f"{obs['bond length RMS deviation']['sets'][s]['mean']:.4f}" for s in sets]
    )
    rows.append(["clashes per frame", "0"] + [f"{obs['clashes']['sets'][s]['mean']:.2f}" for s in sets])
    rows.append(["CG input vs output mapped (nm RMS)", f"<= {CG_BAR}"] + [f"{cg_distance[s]:.4f}" for s in sets])
    rows.append(["s per frame", f"<= {SPEED_BAR:g} on 2 cores"] + [f"{seconds[s]:.1f}" for s in sets])
    return markdown_table(["", "bar", *sets], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("liquid", choices=("cumene", "octane"))
    parser.add_argument("--model", help="model name or file (default: <liquid>-350)")
    parser.add_argument("--out", default="bench-out", help="folder for frames, reports and the table")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="leave the baseline out")
    add_sampler_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    liquid = SHARED / args.liquid
    out = Path(args.out) / args.liquid
    out.mkdir(parents=True, exist_ok=True)
    top_path, mdp = liquid / "topol.top", liquid / "rerun.mdp"
    mapping_files = sorted(liquid.glob("*.map"))
    topology = read_topology(top_path)
    mapping = read_mapping(mapping_files, topology)
    data = held_out(liquid, out)
    config = sampler_config(args, temperature=args.temperature or 350.0)
    model = args.model or f"{args.liquid}-350"
    inputs = dict(trajectory=data.cg, mapping=mapping_files, overwrite=True, progress=False)
    sets, seconds = {"DeepBackmap": out / "dbm.xtc"}, {}
    seconds["DeepBackmap"] = timed(
        lambda: backmap(data.cg_structure, top_path, sets["DeepBackmap"], config, model=model, **inputs), data.n
    )
    if not args.no_baseline:
        sets["baseline"] = out / "baseline.xtc"
        seconds["baseline"] = timed(lambda: baseline(data.cg_structure, top_path, sets["baseline"], **inputs), data.n)
    report = compare(
        data.aa_structure, top_path, data.aa, sets, out / "compare", mdp=mdp, overwrite=True, progress=False
    )
    distance = {s: cg_rms(path, data, mapping) for s, path in sets.items()}
    heading = f"## {args.liquid}: {model}, {data.n} held-out frame(s), {config}"
    text = f"{heading}\n\n{table(report, list(sets), distance, seconds)}\n"
    print(text)
    (out / f"bench_liquids-{args.liquid}.md").write_text(text)


if __name__ == "__main__":
    main()
