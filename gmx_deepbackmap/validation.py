"""`gmx-dbm validate-md`: how MD behaves when it starts from backmapped structures.

From every structure of every labelled set: NPT MD in the reference ensemble (bundled template,
velocities from Maxwell-Boltzmann at T, no heat-up), recording the potential energy and its
terms. A structure sampled from the right distribution starts where MD from the reference starts
and stays there; a structure that is not equilibrated relaxes first (method.md section 7).

Runs are resumable: each run's folder gets `energies.csv` and then `done` when it finished, and
finished runs are not repeated. A run GROMACS stops (e.g. at an exploding start) is recorded as
`failed` with GROMACS' message and listed per set in the summary, with the reason (`why_failed`).

Outputs: `potential.png` (mean and spread over frames, one curve per set), `summary.json` and
`summary.csv` (energies at 0, 10 and 100 ps; time to steady state).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundled import bundled_path, read_mdp, write_mdp
from .errors import GromacsError, InputError
from .frames import FrameSource
from .gromacs import Engine, get_engine, read_edr, run_md
from .structure import atomic_output, write_frames
from .topology import Topology, read_topology

REPORT_TIMES = (0.0, 10.0, 100.0)  # ps
TERMS = ("Potential", "Bond", "Angle", "Proper Dih.", "Improper Dih.", "LJ (SR)", "Coulomb (SR)")


@dataclass(frozen=True)
class Run:
    """The energies over time of one MD run."""

    label: str
    frame: int
    time: np.ndarray  # ps
    energies: dict[str, np.ndarray]  # kJ/mol by GROMACS term name


def validate_md(
    structure: str | os.PathLike,
    topology: str | os.PathLike,
    sets: dict[str, str | os.PathLike],
    output: str | os.PathLike,
    *,
    temperature: float,
    time: float = 100.0,
    frames: slice = slice(None),
    mdp: str | os.PathLike | None = None,
    energy_interval: float = 0.1,
    seed: int = 1,
    engine: str | Engine | None = None,
    threads: int | None = None,
    max_minutes: float | None = 60.0,
    progress: bool = True,
) -> dict:
    """MD from each frame of each set; returns the summary (also written to `output`). A run still
    going after `max_minutes` (None: no limit) is stopped and counted as failed."""
    from tqdm import tqdm

    top = read_topology(topology)
    template = Path(mdp) if mdp else bundled_path("sps/md-npt.mdp")
    engine = engine if isinstance(engine, Engine) else get_engine(engine)
    out = Path(output)
    jobs = [(label, i, frame) for label, path in sets.items() for i, frame in _frames(structure, path, frames, top)]
    if not jobs:
        raise InputError("no frames selected in any set")
    runs, failures = [], {label: {} for label in sets}  # failures: label -> {frame: reason}
    for label, i, frame in tqdm(jobs, desc="MD runs", unit="run", disable=not progress):
        rundir = run_dir(out, label, i)
        if not (rundir / "done").is_file() and not (rundir / "failed").is_file():
            try:
                _run(
                    rundir,
                    frame,
                    top,
                    topology,
                    template,
                    engine,
                    threads,
                    temperature=temperature,
                    time=time,
                    energy_interval=energy_interval,
                    seed=seed + i,
                    timeout=None if max_minutes is None else 60 * max_minutes,
                )
            except GromacsError as exc:  # a structure MD cannot start from is a result, not a crash
                (rundir / "failed").write_text(f"{exc}\n")
        if (rundir / "failed").is_file():
            failures[label][i] = failure_reason((rundir / "failed").read_text())
        else:
            runs.append(_load_run(rundir, label, i))
    summary = summarise(runs)
    for label, failed in failures.items():
        entry = summary.setdefault(label, {"frames": [], "steady_after_ps": None})
        entry["failed"], entry["why_failed"] = list(failed), list(failed.values())
    write_summary(summary, out)
    plot_potential(runs, out / "potential.png", failures)
    return summary


def run_dir(output: str | os.PathLike, label: str, frame: int) -> Path:
    """The folder of the run from `frame` of set `label` (its `failed` file holds GROMACS' message)."""
    return Path(output) / "runs" / label / f"frame{frame:05d}"


def failure_reason(message: str) -> str:
    """The first sentence of GROMACS' fatal error in a failed run's message (the whole first line
    when there is none), e.g. "Too many LINCS warnings (1207)"."""
    _, found, rest = message.partition("Fatal error:")
    lines = message.strip().splitlines()
    text = rest.strip() if found else lines[0] if lines else "unknown"
    return re.split(r"\.\s|\s+If you know what you are doing", text, maxsplit=1)[0].strip()


def _frames(structure, path, frames: slice, top: Topology):
    source = FrameSource.of_topology(top, structure, path, frames)
    return zip(source.indices, source)


def _run(
    rundir: Path,
    frame,
    top,
    topology,
    template: Path,
    engine: Engine,
    threads,
    *,
    temperature: float,
    time: float,
    energy_interval: float,
    seed: int,
    timeout: float | None,
) -> None:
    """One MD run from scratch in `rundir` (a half-finished one is started again)."""
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    start = rundir / "start.gro"
    write_frames(start, top.atom_names, top.residue_names, top.residue_numbers, [frame])
    dt = float(read_mdp(template).get("dt") or 0.001)  # GROMACS' default
    mdp = write_mdp(
        template,
        rundir / "md.mdp",
        ref_t=temperature,
        gen_temp=temperature,
        gen_seed=seed,
        nsteps=int(round(time / dt)),
        nstenergy=max(1, int(round(energy_interval / dt))),
        nstcalcenergy=max(1, int(round(energy_interval / dt))),
    )
    outputs = run_md(
        start, topology, mdp, rundir / "gromacs", engine=engine, maxwarn=1, threads=threads, timeout=timeout
    )
    energies = read_edr(outputs.edr)
    with atomic_output(rundir / "energies.csv", overwrite=True) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        names = ["Time", *[t for t in TERMS if t in energies]]
        writer.writerow(names)
        writer.writerows(np.column_stack([energies[n] for n in names]).tolist())
    (rundir / "done").touch()


def _load_run(rundir: Path, label: str, frame: int) -> Run:
    with (rundir / "energies.csv").open() as f:
        rows = list(csv.reader(f))
    data = np.array(rows[1:], dtype=np.float64)
    columns = {name: data[:, i] for i, name in enumerate(rows[0])}
    return Run(label, frame, columns.pop("Time"), columns)


def steady_time(time: np.ndarray, energy: np.ndarray, tail: float = 0.25) -> float:
    """First time after which the energy stays within 2 sd of its final plateau.

    The plateau is the mean over the last `tail` of the run, its sd the spread there; the
    curve is a running mean over 1 % of the run, so single thermal fluctuations do not count.
    A curve still outside at its last point gives the run's last time (not steady within it).
    """
    n = len(energy)
    window = max(1, n // 100)
    smooth = np.convolve(energy, np.ones(window) / window, mode="same")
    plateau = energy[int(n * (1 - tail)) :]
    outside = np.abs(smooth - plateau.mean()) > 2 * plateau.std() + 1e-9
    last = np.flatnonzero(outside[: n - window // 2])
    return float(time[min(last[-1] + 1, n - 1)]) if len(last) else float(time[0])


def summarise(runs: list[Run]) -> dict:
    """Per set: mean and sd over frames of each term at the report times, and the steady time."""
    summary: dict = {}
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        entry = {"frames": [r.frame for r in mine]}
        for t in REPORT_TIMES:
            if t > min(r.time[-1] for r in mine) + 1e-6:
                continue
            at = {term: [float(np.interp(t, r.time, r.energies[term])) for r in mine] for term in mine[0].energies}
            entry[f"{t:g} ps"] = {term: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for term, v in at.items()}
        mean_curve = np.mean([np.interp(mine[0].time, r.time, r.energies["Potential"]) for r in mine], axis=0)
        entry["steady_after_ps"] = steady_time(mine[0].time, mean_curve)
        summary[label] = entry
    return summary


def write_summary(summary: dict, out: Path) -> None:
    with atomic_output(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_output(out / "summary.csv", overwrite=True) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["set", "time_ps", "term", "mean_kJ_mol", "sd_kJ_mol"])
        for label, entry in summary.items():
            for key, terms in entry.items():
                if key.endswith(" ps") and isinstance(terms, dict):
                    for term, v in terms.items():
                        writer.writerow([label, key[:-3], term, f"{v['mean']:.2f}", f"{v['sd']:.2f}"])
            if entry["steady_after_ps"] is not None:
                writer.writerow([label, "steady_after", "Potential", f"{entry['steady_after_ps']:.2f}", ""])


def plot_potential(runs: list[Run], path: Path, failed: dict[str, Collection[int]] | None = None) -> None:
    """Potential energy against time: mean over frames and its spread, one curve per set; sets
    with runs GROMACS stopped (`failed`: frame indices by set) say so in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    failed = failed or {}
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for label in dict.fromkeys([*(r.label for r in runs), *failed]):
        mine = [r for r in runs if r.label == label]
        stopped = f", {len(failed[label])} failed" if failed.get(label) else ""
        if not mine:
            ax.plot([], [], linestyle="none", label=f"{label}: all {len(failed[label])} runs failed")
            continue
        t = mine[0].time
        curves = np.array([np.interp(t, r.time, r.energies["Potential"]) for r in mine])
        mean, sd = curves.mean(0), curves.std(0)
        (line,) = ax.plot(t, mean, label=f"{label} ({len(mine)} frames{stopped})")
        ax.fill_between(t, mean - sd, mean + sd, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("potential energy (kJ/mol)")
    ax.legend()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
