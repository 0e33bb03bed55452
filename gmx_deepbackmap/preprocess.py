"""The C-preprocessor subset of GROMACS topologies, keeping the file and line of every line.

grompp runs `cpp` over `.top` files; users write `#include`, `#define`, `#ifdef`/`#ifndef`/
`#else`/`#endif` and macros used as parameters. Every surviving line keeps where it came from,
so that errors found later name the file and line the user has to edit.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SourceLine:
    """One topology line after preprocessing: text without comments, and where it came from."""

    text: str
    path: Path
    lineno: int


def gromacs_include_dirs() -> list[Path]:
    """Directories grompp searches after the including file's folder and `-I` ones: GMXLIB, then
    the installation's `share/gromacs/top` (GMXDATA's, else that of the `gmx` the package runs:
    $GMXDBM_GMX or `gmx` on PATH, else the usual places)."""
    dirs = [Path(p) for p in os.environ.get("GMXLIB", "").split(os.pathsep) if p]
    if os.environ.get("GMXDATA"):
        dirs.append(Path(os.environ["GMXDATA"]) / "top")
    executable = shutil.which(os.environ.get("GMXDBM_GMX") or "gmx")
    if executable is not None:
        dirs.append(Path(executable).resolve().parent.parent / "share" / "gromacs" / "top")
    dirs += [Path("/usr/share/gromacs/top"), Path("/usr/local/gromacs/share/gromacs/top")]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def preprocess(
    path: str | os.PathLike,
    defines: dict[str, str] | None = None,
    include_dirs: list[Path] | None = None,
) -> list[SourceLine]:
    """Expand a topology into its non-empty lines, as grompp's preprocessor would see them."""
    return _run(path, defines, include_dirs).lines


def source_files(
    path: str | os.PathLike,
    defines: dict[str, str] | None = None,
    include_dirs: list[Path] | None = None,
) -> list[Path]:
    """Every file the preprocessor reads for a topology (it, then its includes): all that its
    content depends on, e.g. to notice a changed topology."""
    return _run(path, defines, include_dirs).files


def _run(path: str | os.PathLike, defines: dict[str, str] | None, include_dirs: list[Path] | None) -> _State:
    top = Path(path)
    if not top.is_file():
        raise InputError("topology file not found", top)
    state = _State(dict(defines or {}), [top.parent, *(include_dirs or []), *gromacs_include_dirs()])
    state.read(top, stack=())
    return state


class _State:
    def __init__(self, defines: dict[str, str], include_dirs: list[Path]):
        self.defines = defines
        self.include_dirs = include_dirs
        self.lines: list[SourceLine] = []
        self.files: list[Path] = []

    def read(self, path: Path, stack: tuple[Path, ...]) -> None:
        if path.resolve() in stack:
            raise InputError("recursive #include", path)
        self.files.append(path)
        try:
            raw_lines = path.read_text(errors="replace").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read file ({exc.strerror})", path) from None
        active: list[bool] = []  # one entry per open #if block: is its current branch taken
        lineno = 0
        pending = ""
        for lineno, raw in enumerate(raw_lines, start=1):
            line = pending + raw
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            stripped = line.split(";", 1)[0].strip()
            if not stripped:
                continue
            taken = all(active)
            if stripped.startswith("#"):
                self.directive(stripped, path, lineno, active, taken, stack)
            elif taken:
                self.lines.append(SourceLine(self.substitute(stripped), path, lineno))
        if active:
            raise InputError("#ifdef/#ifndef without a matching #endif", path, lineno)

    def directive(self, text, path, lineno, active, taken, stack) -> None:
        keyword, _, rest = text[1:].strip().partition(" ")
        rest = rest.strip()
        if keyword in ("ifdef", "ifndef"):
            if not rest:
                raise InputError(f"#{keyword} needs a macro name", path, lineno)
            active.append((rest.split()[0] in self.defines) == (keyword == "ifdef"))
        elif keyword == "else":
            if not active:
                raise InputError("#else without #ifdef/#ifndef", path, lineno)
            active[-1] = not active[-1]
        elif keyword == "endif":
            if not active:
                raise InputError("#endif without #ifdef/#ifndef", path, lineno)
            active.pop()
        elif not taken:
            return
        elif keyword == "define":
            name, _, value = rest.partition(" ")
            if not name:
                raise InputError("#define needs a macro name", path, lineno)
            self.defines[name] = value.strip()
        elif keyword == "undef":
            self.defines.pop(rest, None)
        elif keyword == "include":
            self.read(self.locate(rest, path, lineno), (*stack, path.resolve()))
        else:
            raise InputError(f"unsupported preprocessor directive '#{keyword}'", path, lineno)

    def locate(self, spec: str, path: Path, lineno: int) -> Path:
        name = spec.strip().strip('"<>')
        if not name:
            raise InputError("#include needs a file name", path, lineno)
        for directory in [path.parent, *self.include_dirs]:
            candidate = directory / name
            if candidate.is_file():
                return candidate
        searched = ", ".join(str(d) for d in [path.parent, *self.include_dirs])
        raise InputError(f"included file '{name}' not found (searched {searched})", path, lineno)

    def substitute(self, text: str) -> str:
        if not self.defines:
            return text
        return _WORD.sub(lambda m: self.defines.get(m.group(0)) or m.group(0), text)
