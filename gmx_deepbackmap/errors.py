"""Errors that reach users: one line naming the file, the place in it and what was expected."""

from __future__ import annotations

from os import PathLike


class InputError(Exception):
    """Bad user input (a file, an option); the CLI prints it on one line and exits non-zero."""

    def __init__(
        self,
        message: str,
        path: str | PathLike | None = None,
        line: int | None = None,
        section: str | None = None,
    ):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.section = section
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            if self.section is not None:
                where += f" [ {self.section} ]"
            where += ": "
        return where + self.message


class GromacsError(RuntimeError):
    """A GROMACS program failed; the message quotes GROMACS' own explanation."""


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite; the last checkpoint (all finite) is kept."""


def read_text(path: str | PathLike, what: str = "file") -> str:
    """A user's text file; a missing, unreadable or non-UTF-8 file is an `InputError` naming it."""
    from pathlib import Path

    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{what} not found", path) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not a text file (byte {exc.start} is not UTF-8)", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None


def read_toml(path: str | PathLike, what: str) -> dict:
    """A user's TOML file as a dict; a missing or malformed file is an `InputError` naming it."""
    import tomllib

    try:
        return tomllib.loads(read_text(path, f"{what} file"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML ({exc})", path) from None
