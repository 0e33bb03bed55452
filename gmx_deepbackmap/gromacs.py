"""GROMACS from Python: one `Engine` interface, two back ends.

- "gmxapi": the gmxapi Python package (`gmxapi.commandline_operation` for grompp, `gmxapi.mdrun`
  in a child interpreter for mdrun, the matching `gmx` from `gmxapi.commandline.cli_executable()`).
  Default when `import gmxapi` works.
- "cli": the `gmx` command line in subprocesses; the executable is $GMXDBM_GMX or `gmx` on PATH.

`get_engine()` picks one (argument, else $GMXDBM_ENGINE, else gmxapi when importable, else cli).
Failures raise `GromacsError` quoting GROMACS' own error block. Every mdrun runs in a fresh working
directory; outputs keep GROMACS' default names (ener.edr, md.log, confout.gro, traj*.trr/.xtc).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundled import bundled_path
from .errors import GromacsError, InputError
from .structure import atomic_output

ENGINE_ENV = "GMXDBM_ENGINE"
GMX_ENV = "GMXDBM_GMX"
ENGINES = ("gmxapi", "cli")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class MdrunOutputs:
    """Files one mdrun wrote (None where the run writes no such file, e.g. confout of a rerun)."""

    edr: Path
    log: Path
    confout: Path | None
    trajectory: Path | None


class Engine(abc.ABC):
    """grompp and mdrun through one back end; see `get_engine`."""

    name: str
    executable: Path  # the `gmx` that runs grompp

    def grompp(
        self,
        mdp: PathLike,
        structure: PathLike,
        topology: PathLike,
        tpr: PathLike,
        *,
        index: PathLike | None = None,
        maxwarn: int = 0,
    ) -> Path:
        """Write the run input `tpr` (the processed `.mdp` goes next to it as `<stem>.mdout.mdp`)."""
        mdp, structure, topology = Path(mdp), Path(structure), Path(topology)
        index = None if index is None else Path(index)
        inputs = [mdp, structure, topology] + ([index] if index is not None else [])
        for path in inputs:
            if not Path(path).is_file():
                raise InputError("file not found", path)
        tpr = Path(tpr).absolute()
        args = [
            "grompp",
            "-f",
            mdp,
            "-c",
            structure,
            "-p",
            topology,
            "-o",
            tpr,
            "-po",
            tpr.with_name(tpr.stem + ".mdout.mdp"),
            "-maxwarn",
            maxwarn,
        ]
        if index is not None:
            args += ["-n", index]
        self._tool([_absolute(a) for a in args])
        if not tpr.is_file():
            raise GromacsError(f"gmx grompp finished but wrote no {tpr}")
        return tpr

    def mdrun(
        self,
        tpr: PathLike,
        workdir: PathLike,
        *,
        rerun: PathLike | None = None,
        threads: int | None = None,
        timeout: float | None = None,
    ) -> MdrunOutputs:
        """Run mdrun on `tpr` in `workdir` (created; must be new or empty); `rerun`: frames to
        evaluate instead of integrating. One thread-MPI rank, `threads` OpenMP threads. `timeout`
        (s): mdrun is killed and GromacsError raised after it (a run that blows up can leave
        GROMACS hanging instead of exiting)."""
        for path in (tpr, rerun):
            if path is not None and not Path(path).is_file():
                raise InputError("file not found", path)
        workdir = Path(workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise InputError("mdrun needs a new or empty working directory", workdir)
        args = {"-s": Path(tpr).absolute(), "-ntmpi": 1}
        if rerun is not None:
            args["-rerun"] = Path(rerun).absolute()
        if threads is not None:
            args["-ntomp"] = threads
        try:
            rundir = self._mdrun({k: str(v) for k, v in args.items()}, workdir, timeout)
        except subprocess.TimeoutExpired:
            raise GromacsError(
                f"gmx mdrun did not finish within {timeout:g} s and was stopped (outputs in {workdir})"
            ) from None
        return _mdrun_outputs(rundir)

    @abc.abstractmethod
    def _tool(self, args: list[str]) -> str:
        """Run `gmx <args>`; return its output, raise GromacsError when it fails."""

    @abc.abstractmethod
    def _mdrun(self, args: dict[str, str], workdir: Path, timeout: float | None) -> Path:
        """Run mdrun with these options inside `workdir`; return the folder with its outputs.
        Raises subprocess.TimeoutExpired (the process killed) after `timeout` s."""


class CliEngine(Engine):
    """The `gmx` command line in subprocesses."""

    name = "cli"

    def __init__(self, executable: PathLike | None = None):
        chosen = str(executable or os.environ.get(GMX_ENV) or "gmx")
        found = shutil.which(chosen)
        if found is None:
            raise GromacsError(f"GROMACS executable '{chosen}' not found; put `gmx` on PATH or set ${GMX_ENV} to it")
        self.executable = Path(found)

    def _run(self, args: list[str], cwd: Path, timeout: float | None = None) -> str:
        program = f"gmx {args[0]}"
        proc = subprocess.run(
            [str(self.executable), "-quiet", "-nobackup", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise gromacs_error(program, output, proc.returncode)
        return output

    def _tool(self, args: list[str]) -> str:
        with tempfile.TemporaryDirectory(prefix="gmxdbm-") as cwd:
            return self._run(args, Path(cwd))

    def _mdrun(self, args: dict[str, str], workdir: Path, timeout: float | None) -> Path:
        self._run(["mdrun", *[word for item in args.items() for word in item]], workdir, timeout)
        return workdir


class GmxapiEngine(Engine):
    """The gmxapi Python package: commandline_operation for tools, the mdrun operation for mdrun.

    mdrun runs in a child interpreter: in-process, a GROMACS fatal error ends the calling Python
    (the library exits, and gmxapi has sent the message to the run's stderr.txt), so it could not
    become a GromacsError.
    """

    name = "gmxapi"

    def __init__(self):
        import gmxapi
        import gmxapi.commandline

        self._gmxapi = gmxapi
        self.executable = Path(gmxapi.commandline.cli_executable())

    def _tool(self, args: list[str]) -> str:
        # commandline_operation runs in a new folder below the current directory: use a scratch one.
        with tempfile.TemporaryDirectory(prefix="gmxdbm-") as cwd, _chdir(Path(cwd)):
            op = self._gmxapi.commandline_operation(str(self.executable), arguments=["-quiet", "-nobackup", *args])
            returncode = op.output.returncode.result()
            output = (op.output.stdout.result() or "") + (op.output.stderr.result() or "")
        if returncode != 0:
            raise gromacs_error(f"gmx {args[0]}", output, returncode)
        return output

    def _mdrun(self, args: dict[str, str], workdir: Path, timeout: float | None) -> Path:
        tpr = args.pop("-s")
        # gmxapi.mdrun works in a new folder below the current directory (workdir).
        proc = subprocess.run(
            [sys.executable, "-c", _GMXAPI_MDRUN, tpr, json.dumps(args)],
            cwd=workdir,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        if proc.returncode != 0:
            texts = [p.read_text(errors="replace") for p in _gromacs_texts(workdir)]
            raise gromacs_error("gmx mdrun (gmxapi)", "\n".join([*texts, proc.stdout, proc.stderr]), proc.returncode)
        return Path(proc.stdout.strip().splitlines()[-1])


# Child-interpreter body of GmxapiEngine._mdrun: argv = tpr, runtime arguments (JSON); prints the
# folder that holds the outputs.
_GMXAPI_MDRUN = """
import json, sys
import gmxapi
md = gmxapi.mdrun(gmxapi.read_tpr(sys.argv[1]), runtime_args=json.loads(sys.argv[2]))
print(md.output.directory.result())
"""


def get_engine(name: str | None = None) -> Engine:
    """A GROMACS engine: `name` ("gmxapi" or "cli"), else $GMXDBM_ENGINE, else gmxapi when
    importable, else cli."""
    chosen = name or os.environ.get(ENGINE_ENV) or None
    if chosen is None:
        try:
            import gmxapi  # noqa: F401
        except ImportError:
            return CliEngine()
        return GmxapiEngine()
    if chosen == "cli":
        return CliEngine()
    if chosen == "gmxapi":
        try:
            return GmxapiEngine()
        except ImportError as exc:
            raise GromacsError(
                f"GROMACS engine 'gmxapi' requested but gmxapi cannot be imported ({exc}); install it "
                "with scripts/install-gromacs-gmxapi.sh or use the 'cli' engine"
            ) from None
    source = "" if name else f" (from ${ENGINE_ENV})"
    raise InputError(f"unknown GROMACS engine '{chosen}'{source}; expected one of {', '.join(ENGINES)}")


def read_edr(path: PathLike) -> dict[str, np.ndarray]:
    """Energy terms of an `.edr` file by GROMACS' names ("Potential", "LJ (SR)", "Time", ...)."""
    import pyedr

    if not Path(path).is_file():
        raise InputError("file not found", path)
    return {k: np.asarray(v, dtype=np.float64) for k, v in pyedr.edr_to_dict(str(path)).items()}


def rerun_energies(
    structure: PathLike,
    trajectory: PathLike,
    topology: PathLike,
    mdp: PathLike | None = None,
    engine: Engine | None = None,
    workdir: PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame energies of `trajectory` (.xtc/.trr/.gro) by term, from `mdrun -rerun`.

    `mdp` defaults to the bundled sPS settings (`sps/rerun.mdp`: reaction field with epsilon_rf
    2.5, 1.0 nm cut-offs, no dispersion correction). `workdir` keeps the files (new or empty
    folder); without it a temporary folder is used and removed.
    """
    engine = engine or get_engine()
    mdp = mdp or bundled_path("sps/rerun.mdp")
    with _workdir(workdir) as work:
        tpr = engine.grompp(mdp, structure, topology, work / "rerun.tpr")
        outputs = engine.mdrun(tpr, work / "mdrun", rerun=trajectory)
        return read_edr(outputs.edr)


def minimise(
    structure: PathLike,
    topology: PathLike,
    mdp: PathLike,
    out_gro: PathLike,
    engine: Engine | None = None,
    workdir: PathLike | None = None,
) -> Path:
    """Energy-minimise `structure` with the settings of `mdp` (e.g. bundled `sps/em.mdp`) and
    write the result to `out_gro` (an existing file is backed up GROMACS-style). `workdir` keeps
    the GROMACS files (new or empty folder)."""
    engine = engine or get_engine()
    with _workdir(workdir) as work:
        tpr = engine.grompp(mdp, structure, topology, work / "em.tpr")
        outputs = engine.mdrun(tpr, work / "mdrun")
        if outputs.confout is None:
            raise GromacsError(f"gmx mdrun minimisation wrote no confout.gro in {outputs.log.parent}")
        with atomic_output(out_gro) as tmp:
            shutil.copyfile(outputs.confout, tmp)
    return Path(out_gro)


def run_md(
    structure: PathLike,
    topology: PathLike,
    mdp: PathLike,
    workdir: PathLike,
    engine: Engine | None = None,
    maxwarn: int = 0,
    threads: int | None = None,
    timeout: float | None = None,
) -> MdrunOutputs:
    """grompp and mdrun of an MD run in `workdir` (new or empty); the outputs stay there.
    `timeout` (s): see `Engine.mdrun`."""
    engine = engine or get_engine()
    work = Path(workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    tpr = engine.grompp(mdp, structure, topology, work / "md.tpr", maxwarn=maxwarn)
    return engine.mdrun(tpr, work / "mdrun", threads=threads, timeout=timeout)


# --------------------------------------------------------------------------- errors

_RULE = re.compile(r"^-{40,}[ \t]*$", re.MULTILINE)
_NOTICES_SHOWN = 3
_NOTICE = re.compile(r"^(?:ERROR|WARNING) \d+ \[[^\]\n]*\]:\n(?:[ \t]+\S.*\n?)+", re.MULTILINE)


def gromacs_error(program: str, output: str, returncode: int | None) -> GromacsError:
    """A GromacsError whose message quotes GROMACS' error block from `output` as one paragraph:
    program and version, source file and line, the error, then grompp's ERROR/WARNING notices."""
    blocks = [b for b in _RULE.split(output) if "Program:" in b or "Fatal error" in b]
    notices = [" ".join(n.split()) for n in _NOTICE.findall(output)]
    if not blocks:
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-12:] if line.strip())
        status = "" if returncode is None else f" with exit status {returncode}"
        return GromacsError(
            f"{program} failed{status} without a GROMACS error message; last output: {tail or '(none)'}"
        )
    block = blocks[-1].split("For more information and tips", 1)[0]
    items, reason = [], []
    for line in block.strip().splitlines():
        line = line.strip()
        if not reason and line.startswith(("Program:", "Source file:", "Function:", "MPI rank:")):
            items.append(" ".join(line.split()))
        elif line:
            reason.append(line)
    items.append(" ".join(" ".join(reason).split()))
    message = f"{program} failed: " + "; ".join(items)
    if notices:
        more = f" (and {len(notices) - _NOTICES_SHOWN} more)" if len(notices) > _NOTICES_SHOWN else ""
        message += " -- " + " ".join(notices[:_NOTICES_SHOWN]) + more
    return GromacsError(message)


# --------------------------------------------------------------------------- helpers


def _absolute(arg) -> str:
    """Paths as absolute strings (tools may run in another folder), other arguments as strings."""
    return str(Path(arg).absolute()) if isinstance(arg, os.PathLike) else str(arg)


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _workdir(workdir: PathLike | None) -> Iterator[Path]:
    """`workdir` (created, must be new or empty), or a temporary folder removed afterwards."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="gmxdbm-") as tmp:
            yield Path(tmp)
        return
    work = Path(workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise InputError("working directory must be new or empty", work)
    yield work


def _gromacs_texts(directory: Path) -> list[Path]:
    """Text files GROMACS (or gmxapi) may have left below `directory`: logs and captured stdio."""
    return sorted(p for pattern in ("*.log", "stderr*.txt", "stdout*.txt") for p in directory.rglob(pattern))


def _mdrun_outputs(rundir: Path) -> MdrunOutputs:
    edr, log = rundir / "ener.edr", rundir / "md.log"
    for path in (edr, log):
        if not path.is_file():
            raise GromacsError(f"gmx mdrun finished but wrote no {path.name} in {rundir}")
    trajectories = sorted(rundir.glob("traj*.xtc")) + sorted(rundir.glob("traj*.trr"))
    confout = rundir / "confout.gro"
    return MdrunOutputs(
        edr=edr,
        log=log,
        confout=confout if confout.is_file() else None,
        trajectory=trajectories[0] if trajectories else None,
    )
