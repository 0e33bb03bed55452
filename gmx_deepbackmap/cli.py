"""`gmx-dbm`: the command line. Thin: each command parses options and calls one library function."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import GromacsError, InputError


class _Group(click.Group):
    """Report user errors on one line with a non-zero exit instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (InputError, GromacsError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gmx-dbm")
def main():
    """gmx-deepbackmap: coarse-grained GROMACS structures back to equilibrated atomistic ones."""


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs instead of backing them up (#file.1#)."
)


@main.command("map")
@click.option("-s", "structure", required=True, type=click.Path(dir_okay=False),
              help="Atomistic structure (.gro, .pdb); with -f, it names the trajectory's atoms.")
@click.option("-f", "trajectory", type=click.Path(dir_okay=False), help="Atomistic trajectory (.xtc, .trr).")
@click.option("-p", "topology", required=True, type=click.Path(dir_okay=False),
              help="Atomistic topology (.top).")
@click.option("-m", "mapping", multiple=True, type=click.Path(dir_okay=False),
              help="Mapping file(s) (topologies/MAPPING.md); unmapped molecule types use the bundled one.")
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False),
              help="CG output: .gro/.pdb for one frame, .xtc/.trr for several.")
@click.option("--frames", default=None, help="Frames to map, b:e:s (Python slice, 0-based).")
@overwrite_option
def map_command(structure, trajectory, topology, mapping, output, frames, overwrite):
    """Map atomistic frames to coarse-grained beads (centres of the mapping's weighted atoms)."""
    from .mapping import map_to_cg
    from .structure import parse_frames

    n = map_to_cg(structure, topology, mapping or None, output, trajectory, parse_frames(frames), overwrite)
    click.echo(f"Mapped {n} frame{'s' if n != 1 else ''} to {output}")


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Training config (TOML; keys of gmx_deepbackmap.training.TrainConfig). Paths in it are "
                   "relative to the file. Options below override it.")
@click.option("--aa", multiple=True, help="AA training structures: files, folders of .gro, or globs.")
@click.option("--cg", multiple=True, help="Matching CG structures (paired by file name); default: mapped.")
@click.option("-p", "topology", type=click.Path(dir_okay=False), help="Atomistic topology (.top).")
@click.option("-m", "mapping", multiple=True, type=click.Path(dir_okay=False), help="Mapping file(s).")
@click.option("-o", "output", type=click.Path(dir_okay=False), help="Model file to write (.pt).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Checkpoint and log folder (resumed if present).")
@click.option("--steps", type=int, help="Generator iterations in all.")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--no-progress", is_flag=True, help="No progress bar (batch jobs).")
@overwrite_option
def train_command(config_path, aa, cg, topology, mapping, output, workdir, steps, device, seed, no_progress,
                  overwrite):
    """Train a DeepBackmap model (WGAN-GP with the force-field prior); resumes from --workdir.

    Runs under torchrun for data-parallel training (gloo on CPU, NCCL on GPU). SIGTERM saves a
    checkpoint and exits; the same command resumes.
    """
    from .training import TrainConfig, read_config, train

    config = read_config(config_path) if config_path else TrainConfig()
    overrides = {"aa": list(aa), "cg": list(cg), "mapping": list(mapping), "topology": topology,
                 "output": output, "workdir": workdir, "steps": steps, "device": device, "seed": seed}
    for key, value in overrides.items():
        if value not in (None, []):
            setattr(config, key, value)
    if not config.topology or not config.aa:
        raise click.UsageError("training needs a topology (-p) and AA structures (--aa), in --config or as options")
    path = train(config, progress=not no_progress, overwrite=overwrite)
    click.echo(f"Model: {path}")


if __name__ == "__main__":  # python -m gmx_deepbackmap.cli (e.g. under torchrun)
    main()
