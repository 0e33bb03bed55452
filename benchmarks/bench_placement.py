"""One-step placement precision of a model on held-out sPS frames: a fast gauge of training progress.

    python benchmarks/bench_placement.py [--model sps-568] [--frames 0:80:40] [--threads 2] [--seed 0]

For the selected frames of t568 (without the training snapshots) and t313, every step of every bead
is generated once in the forward and once in the Gibbs context with all other atoms at their
reference positions, as in training: no errors compound, unlike `bench_backmap.py`. Prints per
context and atom type the mean distance of generated from reference atoms (nm), the mean distance
between two draws of the generator (nm: how much it uses its noise) and the generated density's
mass relative to the atom's Gaussian (1: atom-like; an untrained generator's diffuse output is far
above 1 and its centre of mass is pulled towards the bead). A second table gives per phase (heavy
atoms, hydrogens) and prior term the items' mean energy as generated (bonds before the sampler
restores them), as % of the reference's mean, and the reference's median as % of its mean: a
generator that ignores its noise under the paper's per-item prior lands near the median
(`training.PRIOR_SCORES`). Takes about a minute per frame on 2 cores.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from bench_backmap import DATA, held_out  # the script's folder is on sys.path

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.environment import FORWARD, GIBBS, gather, near_owners, neighbourhood, plan_system
from gmx_deepbackmap.generation import environment_densities, reach, rollout, to_device
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.model import load_model
from gmx_deepbackmap.prior import PRIOR_TERMS, LocalPrior
from gmx_deepbackmap.report import markdown_table
from gmx_deepbackmap.structure import load_universe, parse_frames
from gmx_deepbackmap.topology import read_topology
from gmx_deepbackmap.voxels import coordinates_to_density

CONTEXTS = {"forward": FORWARD, "Gibbs": GIBBS}
ITEMS = 256  # steps per network call


def frame_pairs(name: str, frames: slice):
    """(AA frame, CG frame) of the selected held-out frames."""
    aa = load_universe(DATA / "aa.gro", DATA / name / "aa.xtc")
    cg = load_universe(DATA / "cg.gro", DATA / name / "cg.xtc")
    return zip(held_out(aa, name, frames), held_out(cg, name, frames))


def placement_errors(model, plan, prior, aa, cg, context: int, gen: torch.Generator) -> dict[tuple, list[np.ndarray]]:
    """Per atom type: generated-to-reference distances (nm), distances between two draws (nm) and
    density mass ratios; per phase and prior term: the items' generated and reference energies
    (kJ/mol); of one frame."""
    positions = torch.as_tensor(near_owners(plan, aa.positions, cg.positions, cg.box))
    cg_t, box = torch.as_tensor(cg.positions, dtype=torch.float64), torch.as_tensor(cg.box, dtype=torch.float64)
    hood = neighbourhood(plan, cg.positions, cg.box, reach(model.half_extent))
    out = defaultdict(list)
    for start in range(0, len(plan.step_atoms), ITEMS):
        steps = torch.arange(start, min(start + ITEMS, len(plan.step_atoms)))
        angle = torch.rand(len(steps), generator=gen, dtype=torch.float64) * 2 * np.pi
        batch = to_device(
            gather(
                plan, hood, positions, cg_t, box, steps, torch.full((len(steps),), context), angle, model.half_extent
            ),
            torch.device("cpu"),
        )
        static = environment_densities(batch, plan.layout.n_channels, model.grid)
        (density, coords), (_, other) = (
            rollout(model.generator, static, batch, model.grid, model.network.n_atom_types, model.network.noise_dim)[1:]
            for _ in range(2)
        )
        m = batch.step_mask
        error = (coords - batch.target).norm(dim=-1)[m]
        spread = (coords - other).norm(dim=-1)[m]
        mass = density[m].sum((1, 2, 3)) / coordinates_to_density(batch.target[m], model.grid).sum((1, 2, 3))
        for t, name in enumerate(model.layout.atom_types):
            kind = batch.atom_types[m] == t
            for key, values in (("error", error), ("spread", spread), ("mass", mass)):
                out[name, key].append(values[kind].numpy())
        heavy = plan.step_heavy[steps.numpy()]
        for source, x in (("generated", coords), ("reference", batch.target)):
            for term, energy in prior.energies(batch, x.double()).items():
                for phase, rows in (("heavy", heavy), ("hydrogen", ~heavy)):
                    out[phase, term, source].append(energy[torch.from_numpy(rows)].numpy())
    return out


def energy_rows(results: dict) -> list[list[str]]:
    """Per phase and term: mean generated energy and reference median, as % of the reference mean."""
    rows = []
    for phase in ("heavy", "hydrogen"):
        for term in PRIOR_TERMS:
            generated, reference = (np.concatenate(results[phase, term, s]) for s in ("generated", "reference"))
            mean = reference.mean()
            rows.append(
                [
                    phase,
                    term,
                    f"{mean:.3g}",
                    f"{100 * generated.mean() / mean:.0f}",
                    f"{100 * np.median(reference) / mean:.0f}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sps-568", help="bundled model name or model file")
    parser.add_argument("--frames", default="0:80:40", help="b:e:s of the 78 held-out frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    topology = read_topology(bundled_path("sps/topol.top"))
    plan = plan_system(topology, read_mapping(None, topology), model.layout)
    prior = LocalPrior(topology, plan)
    gen = torch.Generator().manual_seed(args.seed)
    for name in ("t568", "t313"):
        results = {c: defaultdict(list) for c in CONTEXTS}
        n_frames = 0
        with torch.no_grad():
            for aa, cg in frame_pairs(name, parse_frames(args.frames)):
                n_frames += 1
                for label, context in CONTEXTS.items():
                    for key, values in placement_errors(model, plan, prior, aa, cg, context, gen).items():
                        results[label][key] += values
        rows = []
        for atom_type in model.layout.atom_types:
            cells = [atom_type]
            for label in CONTEXTS:
                error, spread, mass = (
                    np.concatenate(results[label][atom_type, k]) for k in ("error", "spread", "mass")
                )
                cells += [f"{error.mean():.3f}", f"{spread.mean():.4f}", f"{np.median(mass):.2f}"]
            rows.append(cells)
        header = ["atom type"] + [
            f"{label} {what}" for label in CONTEXTS for what in ("error (nm)", "two draws apart (nm)", "mass")
        ]
        print(f"## {name}: {args.model}, {n_frames} held-out frames, environment at the reference\n")
        print(markdown_table(header, rows) + "\n", flush=True)
        print(f"Item energies, Gibbs context ({name}):\n")
        print(
            markdown_table(
                ["phase", "term", "reference mean (kJ/mol)", "generated mean, % of it", "reference median, % of it"],
                energy_rows(results["Gibbs"]),
            )
            + "\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
