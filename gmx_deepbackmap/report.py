"""`gmx-dbm compare` (`compare`) and its report: `report.json` (every summary and score), `report.md` (tables and
figures) and PNG figures laid out like Fig. 5 of the DeepBackmap paper: one panel per distribution,
the reference in black and one colour per set. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .analysis import (
    REFERENCE,
    Analysis,
    Distribution,
    PairDistances,
    SetResult,
    available_cores,
    default_observables,
    frame_workers,
    read_observables,
    set_energies,
)
from .errors import InputError
from .frames import FrameSource
from .structure import atomic_output
from .topology import read_topology

FIGURES = {"distributions": "distributions.png", "energies": "energies.png", "bonded types": "bonded-types.png"}
PANEL_SIZE = (4.0, 3.0)  # inches
COLUMNS = 3
SCORES = ("jsd", "l1", "w1")


def build_report(analysis: Analysis, results: dict[str, SetResult]) -> dict:
    """Summaries of every set and scores of every labelled set against the reference, as plain data."""
    reference = results[REFERENCE]
    sets = {label: r for label, r in results.items() if label != REFERENCE}
    report = {
        REFERENCE: {"trajectory": reference.trajectory, "frames": reference.n_frames},
        "sets": {label: {"trajectory": r.trajectory, "frames": r.n_frames} for label, r in sets.items()},
        "observables": {},
    }
    for o in analysis.observables:
        ref_values = reference.values[o.name]
        report["observables"][o.name] = {
            "kind": o.kind,
            "unit": o.unit,
            REFERENCE: o.summary(ref_values),
            "sets": {
                label: {**o.summary(r.values[o.name]), **o.score(ref_values, r.values[o.name])}
                for label, r in sets.items()
            },
        }
    if reference.energies is not None:
        report["energies"] = {"unit": "kJ/mol", "terms": {}}
        for term, ref_values in reference.energies.items():
            ref_mean = float(ref_values.mean())
            report["energies"]["terms"][term] = {
                REFERENCE: _mean_sd(ref_values),
                "sets": {
                    label: {**_mean_sd(r.energies[term]), "delta_mean": float(r.energies[term].mean()) - ref_mean}
                    for label, r in sets.items()
                },
            }
    return report


def _mean_sd(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def write_report(
    report: dict, analysis: Analysis, results: dict[str, SetResult], output: str | os.PathLike, overwrite: bool = False
) -> list[Path]:
    """Write the figures, `report.json` and `report.md` into the folder `output`; returns their paths."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    written = [_save(plot_distributions(analysis, results), folder / FIGURES["distributions"], overwrite)]
    if "energies" in report:
        written.append(_save(plot_energies(report), folder / FIGURES["energies"], overwrite))
    by_type = [o for o in report["observables"].values() if o["kind"] == "energy"]
    if by_type and report["sets"]:
        written.append(
            _save(plot_bonded_types(by_type[0], list(report["sets"])), folder / FIGURES["bonded types"], overwrite)
        )
    with atomic_output(folder / "report.json", overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    written.append(folder / "report.json")
    with atomic_output(folder / "report.md", overwrite) as tmp:
        tmp.write_text(markdown(report, [p.name for p in written if p.suffix == ".png"]))
    written.append(folder / "report.md")
    return written


def _save(figure, path: Path, overwrite: bool) -> Path:
    with atomic_output(path, overwrite) as tmp:
        figure.savefig(tmp, dpi=120)
    return path


# --------------------------------------------------------------------------- figures


def _colours(labels: list[str]) -> dict[str, str]:
    """Black for the reference, the tab10 cycle for the sets."""
    cycle = [f"C{k % 10}" for k in range(len(labels))]
    return {REFERENCE: "black", **{label: cycle[k] for k, label in enumerate(labels)}}


def _panels(n: int):
    from matplotlib.figure import Figure

    rows = max(math.ceil(n / COLUMNS), 1)
    columns = min(max(n, 1), COLUMNS)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, axes[:n]


def plot_distributions(analysis: Analysis, results: dict[str, SetResult]):
    """One panel per distribution (probability density on the scoring bins) and for the pair
    distances (pairs per frame and nm^3 of shell volume, proportional to g(r))."""
    shown = [o for o in analysis.observables if isinstance(o, (Distribution, PairDistances))]
    figure, axes = _panels(len(shown))
    colours = _colours([label for label in results if label != REFERENCE])
    reference = results[REFERENCE]
    for ax, o in zip(axes, shown):
        off_axis = False
        for label, r in results.items():
            style = {"color": colours[label], "lw": 2.0 if label == REFERENCE else 1.2, "label": label}
            if isinstance(o, PairDistances):
                edges = o.edges
                shell = 4 * np.pi * edges[1:] ** 3 / 3 - 4 * np.pi * edges[:-1] ** 3 / 3
                ax.plot(0.5 * (edges[1:] + edges[:-1]), r.values[o.name].mean(0) / shell, **style)
                ax.set_ylabel("pairs / (frame nm$^3$)")
            else:
                edges = o.edges(reference.values[o.name])
                density, outside = _density(r.values[o.name], edges)
                if outside >= 0.005:  # say so: a set far off the reference's bins draws nothing
                    style["label"] = f"{label} ({100 * outside:.3g} % off the axis)"
                    off_axis = True
                ax.stairs(density, edges, **style)
                ax.set_ylabel("probability density")
        ax.set_title(o.name, fontsize=10)
        ax.set_xlabel(o.unit)
        if off_axis:
            ax.legend(fontsize=7)
    if len(shown):
        axes[0].legend(fontsize=8)
    return figure


def _density(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float]:
    """Probability density over the bins and the fraction of values outside them. The density is
    of all values, so a set mostly off the axis draws a small curve, not a tall one."""
    counts = np.histogram(values, edges)[0]
    total = max(np.size(values), 1)
    return counts / (total * np.diff(edges)), 1.0 - counts.sum() / total


def plot_energies(report: dict):
    """One panel per energy term: mean and standard deviation over frames for each set."""
    terms = report["energies"]["terms"]
    figure, axes = _panels(len(terms))
    labels = [REFERENCE, *report["sets"]]
    colours = _colours(labels[1:])
    for ax, (term, entry) in zip(axes, terms.items()):
        for k, label in enumerate(labels):
            stats = entry[REFERENCE] if label == REFERENCE else entry["sets"][label]
            ax.errorbar([k], [stats["mean"]], yerr=[stats["sd"]], fmt="o", color=colours[label], capsize=4)
        ax.axhline(entry[REFERENCE]["mean"], color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(term, fontsize=10)
        ax.set_ylabel("kJ/mol")
    return figure


def plot_bonded_types(observable: dict, labels: list[str]):
    """Horizontal bars: each set's energy of each bonded term group as % of the reference's."""
    from matplotlib.figure import Figure

    groups = list(observable[REFERENCE])
    figure = Figure(
        figsize=(PANEL_SIZE[0] * 2, 0.8 + 0.25 * len(groups) * max(len(labels), 1) ** 0.5), layout="constrained"
    )
    ax = figure.subplots()
    colours = _colours(labels)
    height = 0.8 / len(labels)
    for k, label in enumerate(labels):
        share = [observable["sets"][label][f"{group} %"] for group in groups]
        ax.barh(
            np.arange(len(groups)) + (k - (len(labels) - 1) / 2) * height,
            share,
            height,
            color=colours[label],
            label=label,
        )
    ax.axvline(100, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of the reference's mean energy")
    ax.legend(fontsize=8)
    return figure


# --------------------------------------------------------------------------- markdown


def _number(value) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e6):
        return str(int(value))
    return f"{value:.4g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of string cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _summary(values: dict) -> str:
    if "mean" in values and "sd" in values:
        return f"{_number(values['mean'])} ± {_number(values['sd'])}"
    return ", ".join(f"{key} {_number(v)}" for key, v in values.items())


def markdown(report: dict, figures: list[str]) -> str:
    """The report as Markdown: sets, scores, summaries, energies, checks and the figures."""
    labels = list(report["sets"])
    observables = report["observables"]
    lines = [
        "# Comparison with the reference",
        "",
        f"Reference: `{report[REFERENCE]['trajectory']}` ({report[REFERENCE]['frames']} frames).",
        "",
    ]
    lines += [f"- `{label}`: `{s['trajectory']}` ({s['frames']} frames)" for label, s in report["sets"].items()]

    scored = {name: o for name, o in observables.items() if o["kind"] in ("distribution", "histogram")}
    rows = [
        [name, label, *[_number(o["sets"][label][k]) if k in o["sets"][label] else "-" for k in SCORES], o["unit"]]
        for name, o in scored.items()
        for label in labels
    ]
    lines += [
        "",
        "## Scores",
        "",
        "JSD: Jensen-Shannon divergence (natural log) on fixed bins; L1: difference of per-frame pair counts "
        "relative to the reference's; W1: 1-Wasserstein distance, in the observable's unit.",
        "",
        markdown_table(["observable", "set", *(k.upper() for k in SCORES), "unit"], rows),
    ]

    header = ["observable", "unit", REFERENCE, *labels]
    rows = [
        [name, o["unit"], _summary(o[REFERENCE]), *[_summary(_only_summary(o, label)) for label in labels]]
        for name, o in observables.items()
        if o["kind"] != "energy"
    ]
    lines += ["", "## Summaries (mean ± sd, or as named)", "", markdown_table(header, rows)]

    if "energies" in report:
        rows = [
            [term, _summary(e[REFERENCE]), *[_summary(e["sets"][label]) for label in labels]]
            for term, e in report["energies"]["terms"].items()
        ]
        lines += [
            "",
            "## Energies per frame (gmx mdrun -rerun, kJ/mol, mean ± sd)",
            "",
            markdown_table(["term", REFERENCE, *labels], rows),
        ]

    for name, o in observables.items():
        if o["kind"] == "energy":
            rows = [
                [group, _number(mean), *[_with_share(o["sets"][label], group) for label in labels]]
                for group, mean in o[REFERENCE].items()
            ]
            lines += [
                "",
                f"## {name[0].upper()}{name[1:]} ({o['unit']} per frame, mean; % of the reference)",
                "",
                markdown_table(["terms", REFERENCE, *labels], rows),
            ]

    lines += [""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _with_share(values: dict, group: str) -> str:
    return f"{_number(values[group])} ({values[f'{group} %']:.0f} %)"


def _only_summary(observable: dict, label: str) -> dict:
    """A set's entry without the scores that the reference's summary lacks, plus chirality flips."""
    values = observable["sets"][label]
    keep = set(observable[REFERENCE]) | {"flips_per_frame"}
    return {k: v for k, v in values.items() if k in keep}


def compare(
    structure: str | os.PathLike,
    topology: str | os.PathLike,
    reference: str | os.PathLike,
    sets: dict[str, str | os.PathLike],
    output: str | os.PathLike,
    frames: slice = slice(None),
    observables: str | os.PathLike | None = None,
    rerun: bool = True,
    mdp: str | os.PathLike | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Compare labelled sets of atomistic frames with reference frames and write a report.

    `structure` names the atoms of every trajectory; `frames` (a slice) selects the same frames of
    each. Writes `report.json`, `report.md` and PNG figures to the folder `output` and returns the
    report (as in `report.json`). `observables`: a TOML table (`read_observables`); default: the
    bundled table of the topology's molecule types. `rerun`: per-term energies by `gmx mdrun
    -rerun` with `mdp` (default: the bundled sPS settings). `workers`: processes for the frame
    analysis (default: one per available core).
    """
    from tqdm import tqdm

    from .gromacs import get_engine

    for label in sets:
        if not label or label == REFERENCE or "=" in label:
            raise InputError(f"invalid set label '{label}' (non-empty, not '{REFERENCE}', no '=')")
    trajectories = {REFERENCE: reference, **sets}
    for path in (structure, *trajectories.values()):
        if not Path(path).is_file():
            raise InputError("file not found", path)
    top = read_topology(topology)
    config = read_observables(observables) if observables else default_observables(top)
    analysis = Analysis.from_topology(top, config)
    engine = get_engine() if rerun else None  # fails early when GROMACS is missing
    workers = available_cores() if workers is None else workers
    executor = frame_workers(analysis, workers) if workers > 1 else None
    results = {}
    try:
        for label, trajectory in tqdm(trajectories.items(), desc="sets", unit="set", disable=not progress):
            source = FrameSource.of_topology(top, structure, trajectory, frames)
            selected = tqdm(source, total=len(source), desc=label, unit="frame", leave=False, disable=not progress)
            values = analysis.run(selected, executor, window=2 * workers)
            results[label] = SetResult(label, str(trajectory), len(source), values)
    finally:
        if executor is not None:
            executor.shutdown()
    if engine is not None:
        for label, trajectory in tqdm(trajectories.items(), desc="rerun", unit="set", disable=not progress):
            results[label].energies = set_energies(structure, trajectory, top, frames, mdp, engine)
    report = build_report(analysis, results)
    write_report(report, analysis, results, output, overwrite)
    return report
