"""`gmx-dbm`: the command line. Thin: each command parses options and calls one library function."""

from __future__ import annotations

import dataclasses
import sys
import typing

import click

from . import __version__
from .config import SamplerConfig
from .errors import GromacsError, InputError, TrainingDiverged

USER_ERRORS = (InputError, GromacsError, TrainingDiverged)
USER_ERROR_EXIT = 1
INTERNAL_ERROR_EXIT = 3  # click's own usage errors exit with 2


class _Group(click.Group):
    """The one top-level handling of errors: a user error (bad input, a failed GROMACS run) is one
    line and exit 1; anything else is a bug, reported on one line that points to a log file with
    the traceback (exit 3); `--debug` shows tracebacks instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except USER_ERRORS as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(USER_ERROR_EXIT)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            log = _crash_log(exc)
            click.echo(
                f"Internal error ({type(exc).__name__}), a bug rather than bad input: traceback in {log} "
                "(rerun with --debug to see it)",
                err=True,
            )
            sys.exit(INTERNAL_ERROR_EXIT)


def _crash_log(exc: Exception) -> str:
    """Write the command line and `exc`'s traceback to a new file in the temporary folder; its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="gmx-dbm-crash-", suffix=".log")
    with open(fd, "w") as log:
        log.write(f"gmx-dbm {__version__}: {' '.join(sys.argv)}\n\n")
        log.write("".join(traceback.format_exception(exc)))
    return path


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gmx-dbm")
@click.option("--debug", is_flag=True, help="Show the traceback of every error (for bug reports).")
def main(debug):
    """gmx-deepbackmap: coarse-grained GROMACS structures back to equilibrated atomistic ones."""


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs instead of backing them up (#file.1#)."
)
no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bars (batch jobs).")
frames_option = click.option("--frames", default=None, help="Frames to use, b:e:s (Python slice, 0-based).")
allow_renamed_option = click.option(
    "--allow-renamed",
    is_flag=True,
    help="Accept atoms or beads named otherwise than in the topology or mapping, if in its order (a "
    "warning, as grompp's -maxwarn); default: the first differing line is an error.",
)
engine_option = click.option(
    "--engine",
    type=click.Choice(["gmxapi", "cli"]),
    default=None,
    help="GROMACS back end. Default: $GMXDBM_ENGINE, else gmxapi when importable, else cli.",
)
mapping_option = click.option(
    "-m",
    "mapping",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Mapping file(s) (topologies/MAPPING.md); unmapped molecule types use the bundled one.",
)
aa_structure_option = click.option(
    "-s",
    "structure",
    required=True,
    type=click.Path(dir_okay=False),
    help="Atomistic structure (.gro, .pdb); it names the atoms of the trajectories.",
)
aa_trajectory_option = click.option(
    "-f", "trajectory", type=click.Path(dir_okay=False), help="Atomistic trajectory (.xtc, .trr)."
)
topology_option = click.option(
    "-p", "topology", required=True, type=click.Path(dir_okay=False), help="Atomistic topology (.top)."
)
cg_structure_option = click.option(
    "-s",
    "structure",
    required=True,
    type=click.Path(dir_okay=False),
    help="CG structure (.gro, .pdb): one bead per line, in mapping order; with -f, it names the beads.",
)
cg_trajectory_option = click.option(
    "-f", "trajectory", type=click.Path(dir_okay=False), help="CG trajectory (.xtc, .trr)."
)


def system_topology_option(default: str):
    """`-p`, the atomistic topology of the system to build; `default` says what is used without it."""
    return click.option(
        "-p",
        "topology",
        type=click.Path(dir_okay=False),
        help=f"Atomistic topology (.top) of the system to build. Default: {default}.",
    )


aa_output_option = click.option(
    "-o",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Atomistic output: .gro/.pdb for one frame, .xtc/.trr for several.",
)


@main.command("map")
@aa_structure_option
@aa_trajectory_option
@topology_option
@mapping_option
@click.option(
    "-o",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="CG output: .gro/.pdb for one frame, .xtc/.trr for several.",
)
@frames_option
@no_progress_option
@allow_renamed_option
@overwrite_option
def map_command(structure, trajectory, topology, mapping, output, frames, no_progress, allow_renamed, overwrite):
    """Map atomistic frames to coarse-grained beads (centres of the mapping's weighted atoms)."""
    from .mapping import map_to_cg
    from .structure import parse_frames

    n = map_to_cg(
        structure,
        topology,
        mapping or None,
        output,
        trajectory,
        parse_frames(frames),
        overwrite,
        not no_progress,
        allow_renamed,
    )
    click.echo(f"Mapped {n} frame{'s' if n != 1 else ''} to {output}")


@main.command("train")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Training config (TOML; keys of gmx_deepbackmap.training.TrainConfig). Paths in it are "
    "relative to the file. Options below override it.",
)
@click.option("--aa", multiple=True, help="AA training structures: files, folders of .gro, or globs.")
@click.option("--cg", multiple=True, help="Matching CG structures (paired by file name); default: mapped.")
@click.option("-p", "topology", type=click.Path(dir_okay=False), help="Atomistic topology (.top).")
@mapping_option
@click.option("-o", "output", type=click.Path(dir_okay=False), help="Model file to write (.pt).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Checkpoint and log folder (resumed if present).")
@click.option("--steps", type=int, help="Generator iterations in all.")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--seed", type=int, help="Random seed.")
@no_progress_option
@overwrite_option
def train_command(config_path, aa, cg, topology, mapping, output, workdir, steps, device, seed, no_progress, overwrite):
    """Train a DeepBackmap model (WGAN-GP with the force-field prior); resumes from --workdir.

    Runs under torchrun for data-parallel training (gloo on CPU, NCCL on GPU). SIGTERM saves a
    checkpoint and exits; the same command resumes.
    """
    from .training import TrainConfig, read_config, train

    config = read_config(config_path) if config_path else TrainConfig()
    overrides = {
        "aa": list(aa),
        "cg": list(cg),
        "mapping": list(mapping),
        "topology": topology,
        "output": output,
        "workdir": workdir,
        "steps": steps,
        "device": device,
        "seed": seed,
    }
    for key, value in overrides.items():
        if value not in (None, []):
            setattr(config, key, value)
    if not config.topology or not config.aa:
        raise click.UsageError("training needs a topology (-p) and AA structures (--aa), in --config or as options")
    path = train(config, progress=not no_progress, overwrite=overwrite)
    if path is not None:
        click.echo(f"Model: {path}")


def sampler_options(command):
    """Every `SamplerConfig` field as an option of `command`: name, type, bounds, choices, default
    and help all come from the dataclass, so the command line cannot drift from the library."""
    hints = typing.get_type_hints(SamplerConfig)
    for f in reversed(dataclasses.fields(SamplerConfig)):
        meta = f.metadata
        if hints[f.name] is bool:
            option = click.option(
                meta["flag"], f.name, is_flag=True, flag_value=not f.default, default=f.default, help=meta["help"]
            )
        else:
            option = click.option(
                f"--{f.name.replace('_', '-')}",
                f.name,
                type=_option_type(hints[f.name], meta),
                default=f.default,
                show_default=f.default is not None,
                metavar=meta.get("metavar"),
                help=meta["help"],
            )
        command = option(command)
    return command


def _option_type(hint, meta: dict):
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    if meta.get("minimum") is None:
        return kind
    bounded = click.IntRange if kind is int else click.FloatRange
    return bounded(min=meta["minimum"], min_open=bool(meta.get("open_minimum")))


@main.command("backmap")
@cg_structure_option
@cg_trajectory_option
@system_topology_option("the bundled topology the model was trained on")
@mapping_option
@click.option(
    "--model",
    default="sps-568",
    show_default=True,
    metavar="NAME|PATH",
    help="Model: a bundled model's name or a model file (.pt) from `gmx-dbm train`.",
)
@click.option(
    "-o",
    "output",
    type=click.Path(dir_okay=False),
    help="Atomistic output: .gro/.pdb for one frame, .xtc/.trr for several (with --workdir: the merged chunks).",
)
@frames_option
@click.option(
    "--mdp",
    type=click.Path(dir_okay=False),
    help="Non-bonded settings (cut-off, reaction field, LJ modifier) and defines of the force field, as for "
    "grompp; default: those the model was trained with.",
)
@sampler_options
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Backmap in chunks into this folder (resumable: finished chunks are skipped); join them "
    "with -o or `gmx-dbm merge`.",
)
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=10, show_default=True, help="Frames per chunk with --workdir."
)
@click.option(
    "--chunk",
    "only",
    type=click.IntRange(min=0),
    help="With --workdir: do only this chunk (0-based), e.g. $SLURM_ARRAY_TASK_ID.",
)
@allow_renamed_option
@no_progress_option
@overwrite_option
def backmap_command(
    structure,
    trajectory,
    topology,
    mapping,
    model,
    output,
    frames,
    mdp,
    workdir,
    chunk_size,
    only,
    allow_renamed,
    no_progress,
    overwrite,
    **sampler,
):
    """Backmap CG frames to atomistic ones with a trained DeepBackmap generator.

    Every frame: a forward pass (heavy atoms, then hydrogens), then Gibbs sweeps, then repair
    rounds for the few beads left strained, and last Metropolis sweeps with the force field at the
    frames' temperature on the CG frame; no energy minimisation. Output atoms follow the
    topology (names, residues, order); molecules are whole and the CG box is kept.
    """
    from .model import default_topology
    from .structure import check_writable, parse_frames

    if output is None and workdir is None:
        raise click.UsageError("give -o, --workdir, or both")
    if output is not None:
        check_writable(output)  # before any work, also when the chunks are merged into it
    config = SamplerConfig(**sampler)
    inputs = dict(
        mapping=list(mapping) or None,
        model=model,
        frames=parse_frames(frames),
        progress=not no_progress,
        allow_renamed=allow_renamed,
        mdp=mdp,
    )
    top = topology or default_topology(model)
    if workdir is None:
        from .sampling import backmap

        n = backmap(structure, top, output, config, trajectory=trajectory, overwrite=overwrite, **inputs)
    else:
        from .chunks import backmap_in_chunks, merge_chunks

        n = backmap_in_chunks(
            structure, top, workdir, config, trajectory=trajectory, chunk_size=chunk_size, only=only, **inputs
        )
        if output is not None:
            merge_chunks(workdir, output, overwrite)
    click.echo(f"Backmapped {n} frame{'s' if n != 1 else ''} to {output or workdir}")


@main.command("merge")
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@aa_output_option
@overwrite_option
def merge_command(workdir, output, overwrite):
    """Join the chunks of a `gmx-dbm backmap --workdir` folder in frame order; all must be there."""
    from .chunks import merge_chunks

    n = merge_chunks(workdir, output, overwrite)
    click.echo(f"Merged {n} frame{'s' if n != 1 else ''} into {output}")


@main.command("energy")
@aa_structure_option
@aa_trajectory_option
@topology_option
@click.option(
    "-o",
    "output",
    default="energies.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="CSV: frame, time (ps), then each term and the potential in kJ/mol.",
)
@frames_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--mdp",
    type=click.Path(dir_okay=False),
    help="Non-bonded settings of this .mdp (cut-off, coulombtype, epsilon-r/-rf, vdw-modifier); "
    "instead of --cutoff and --epsilon-rf.",
)
@click.option(
    "--cutoff", type=click.FloatRange(min=0, min_open=True), default=None, help="rvdw = rcoulomb, nm [default: 1.0]."
)
@click.option("--epsilon-rf", type=float, default=None, help="Reaction-field dielectric constant [default: 2.5].")
@allow_renamed_option
@no_progress_option
@overwrite_option
def energy_command(
    structure,
    trajectory,
    topology,
    output,
    frames,
    device,
    mdp,
    cutoff,
    epsilon_rf,
    allow_renamed,
    no_progress,
    overwrite,
):
    """Force-field energies per frame and term, as `gmx mdrun -rerun` reports them.

    Verlet scheme: reaction-field Coulomb (a plain cut-off is reaction field with epsilon-rf 1;
    PME/Ewald is approximated by epsilon-rf 0), LJ plain or potential-shifted, no dispersion
    correction; without --mdp the settings of the sPS reference data (bundled sps/rerun.mdp).
    """
    from .energies import energy_summary, frame_energies, write_energy_csv
    from .mdp import nonbonded_settings, topology_options
    from .structure import check_writable, parse_frames
    from .topology import read_topology

    check_writable(output)
    if mdp is not None and (cutoff is not None or epsilon_rf is not None):
        raise InputError("--mdp gives the cut-off and epsilon-rf: leave out --cutoff and --epsilon-rf")
    given = {k: v for k, v in (("cutoff", cutoff), ("epsilon_rf", epsilon_rf)) if v is not None}
    settings = dataclasses.replace(nonbonded_settings(mdp), **given)
    topology = read_topology(topology, *topology_options(mdp))  # the .mdp's define and include, as grompp
    rows = frame_energies(
        structure,
        topology,
        trajectory,
        parse_frames(frames),
        device,
        progress=not no_progress,
        settings=settings,
        allow_renamed=allow_renamed,
    )
    write_energy_csv(output, rows, overwrite)
    click.echo(energy_summary(rows))
    click.echo(f"Energies of {len(rows)} frame{'s' if len(rows) != 1 else ''} written to {output}")


@main.command("compare")
@aa_structure_option
@topology_option
@click.option(
    "--ref", "reference", required=True, type=click.Path(dir_okay=False), help="Reference frames (.xtc, .trr)."
)
@click.option(
    "--label",
    "labels",
    required=True,
    multiple=True,
    metavar="NAME=TRAJ",
    help="A set to compare with the reference, e.g. dbm=backmapped.xtc; repeat for more sets.",
)
@click.option(
    "-o",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Report folder: report.json, report.md and PNG figures.",
)
@frames_option
@click.option(
    "--observables",
    type=click.Path(dir_okay=False),
    help="Observables table (TOML, see topologies/sps/observables.toml); default: the bundled one "
    "of the topology's molecule types.",
)
@click.option("--no-rerun", is_flag=True, help="Skip the per-term energies from `gmx mdrun -rerun`.")
@click.option(
    "--mdp", type=click.Path(dir_okay=False), help="Settings of the energy rerun; default: the bundled sPS rerun.mdp."
)
@click.option("--workers", type=click.IntRange(min=1), help="Processes for the frame analysis; default: one per core.")
@no_progress_option
@overwrite_option
def compare_command(
    structure, topology, reference, labels, output, frames, observables, no_rerun, mdp, workers, no_progress, overwrite
):
    """Compare sets of atomistic frames with reference frames (method.md section 7).

    Bonded distributions, per-molecule LJ energy (all pairs, and split into pairs within and
    between molecules), carbon pair distances, GROMACS energies per term, bonded energies per
    atom-type tuple, bond lengths, clashes, ring planarity and chirality; scores (Jensen-Shannon
    divergence, 1-Wasserstein distance, % of the reference's energy) against the reference.
    """
    from .report import compare
    from .structure import parse_frames

    sets = parse_labels(labels)
    report = compare(
        structure,
        topology,
        reference,
        sets,
        output,
        parse_frames(frames),
        observables,
        rerun=not no_rerun,
        mdp=mdp,
        workers=workers,
        overwrite=overwrite,
        progress=not no_progress,
    )
    click.echo(
        f"Compared {len(sets)} set{'s' if len(sets) != 1 else ''} with {report['reference']['frames']} "
        f"reference frames; report in {output}"
    )


@main.command("validate-md")
@aa_structure_option
@topology_option
@click.option(
    "--label",
    "labels",
    multiple=True,
    required=True,
    metavar="NAME=FILE",
    help="A set of starting structures (.xtc/.trr/.gro); repeat for several sets on the same frames.",
)
@click.option("--temperature", type=float, required=True, help="Temperature (K) of velocities and thermostat.")
@click.option("--time", "time_ps", type=float, default=100.0, show_default=True, help="Length of each run (ps).")
@frames_option
@click.option("--mdp", type=click.Path(dir_okay=False), help="MD template (default: bundled sps/md-npt.mdp).")
@click.option("--seed", type=int, default=1, show_default=True, help="Velocity seed of the first frame (+1 per frame).")
@engine_option
@click.option("--nt", "threads", type=int, help="OpenMP threads per mdrun.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Wall-clock limit per run: a run still going then is stopped and counted as failed (a run "
    "that blows up can leave GROMACS hanging).",
)
@click.option(
    "-o", "output", required=True, type=click.Path(file_okay=False), help="Output folder (resumed if present)."
)
@no_progress_option
def validate_md_command(
    structure,
    topology,
    labels,
    temperature,
    time_ps,
    frames,
    mdp,
    seed,
    engine,
    threads,
    max_minutes,
    output,
    no_progress,
):
    """NPT MD from every structure of every set; potential energy over time, plot and summary.

    Finished runs in -o are not repeated, so an interrupted call resumes where it stopped.
    """
    from .structure import parse_frames
    from .validation import run_dir, validate_md

    summary = validate_md(
        structure,
        topology,
        parse_labels(labels),
        output,
        temperature=temperature,
        time=time_ps,
        frames=parse_frames(frames),
        mdp=mdp,
        seed=seed,
        engine=engine,
        threads=threads,
        max_minutes=max_minutes,
        progress=not no_progress,
    )
    for label, entry in summary.items():
        steady = (
            "no run finished" if entry["steady_after_ps"] is None else f"steady after {entry['steady_after_ps']:.1f} ps"
        )
        click.echo(
            f"{label}: {steady}; {len(entry['failed'])} of {len(entry['frames']) + len(entry['failed'])} runs failed"
        )
        for frame, reason in zip(entry["failed"], entry["why_failed"]):
            click.echo(f"  frame {frame}: {reason} ({run_dir(output, label, frame) / 'failed'})")
    click.echo(f"Plot and summary in {output}")


def parse_labels(labels) -> dict[str, str]:
    """`NAME=FILE` options to a dict, with a clear error for anything else."""
    sets = {}
    for item in labels:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"'{item}': expected NAME=FILE", param_hint="--label")
        if name in sets:
            raise click.BadParameter(f"label '{name}' given twice", param_hint="--label")
        sets[name] = path
    return sets


@main.command("baseline")
@cg_structure_option
@cg_trajectory_option
@system_topology_option("the bundled sPS one (36 PS1)")
@mapping_option
@aa_output_option
@frames_option
@click.option(
    "--mdp",
    type=click.Path(dir_okay=False),
    help="Force-field settings of the minimisation (cut-offs, electrostatics, defines), made steepest descent; "
    "default: the bundled sps/em.mdp.",
)
@click.option("--no-em", is_flag=True, help="Stop after placement and modifiers (no energy minimisation).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random displacement; each frame's result depends only on it and the frame's index.",
)
@click.option(
    "--displacement",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Random displacement of the atoms no modifier names, nm (sd per coordinate); 0: none.",
)
@engine_option
@allow_renamed_option
@no_progress_option
@overwrite_option
def baseline_command(
    structure,
    trajectory,
    topology,
    mapping,
    output,
    frames,
    mdp,
    no_em,
    seed,
    displacement,
    engine,
    allow_renamed,
    no_progress,
    overwrite,
):
    """Backmap CG frames with the geometric baseline (Wassenaar et al. 2014, "backward").

    Every atom at the weighted average of its beads, then the mapping's geometric modifiers (cis,
    trans, out, chiral) and a random displacement of the atoms they do not name, then GROMACS steepest
    descent: 200 steps without non-bonded interactions, 5,000 with everything on. Prints the wall
    time per frame.
    """
    from .baseline import baseline
    from .bundled import bundled_path
    from .structure import parse_frames

    n = baseline(
        structure,
        topology or bundled_path("sps/topol.top"),
        output,
        trajectory=trajectory,
        mapping=list(mapping) or None,
        frames=parse_frames(frames),
        seed=seed,
        displacement=displacement,
        minimise=not no_em,
        engine=engine,
        overwrite=overwrite,
        progress=not no_progress,
        allow_renamed=allow_renamed,
        mdp=mdp,
    )
    click.echo(f"Backmapped {n} frame{'s' if n != 1 else ''} with the baseline to {output}")


if __name__ == "__main__":  # python -m gmx_deepbackmap.cli (e.g. under torchrun)
    main()
