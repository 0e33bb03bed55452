"""Files that ship with the package (`topologies/`, installed as `gmx_deepbackmap.topologies`).

`bundled_path("sps/topol.top")` finds a bundled file in an installed package or a source checkout;
`write_mdp` writes a copy of an `.mdp` template with some keys changed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parent.parent / "topologies"


def bundled_root() -> Path:
    """The folder that holds the bundled topologies and `.mdp` templates."""
    try:
        root = resources.files("gmx_deepbackmap.topologies")
    except ModuleNotFoundError:  # source checkout that was never installed
        return _SOURCE_TREE
    return root if isinstance(root, Path) else _SOURCE_TREE


def bundled_path(relative: str) -> Path:
    """Path of a bundled file, e.g. `bundled_path("sps/rerun.mdp")`."""
    path = bundled_root() / relative
    if not path.exists():
        raise FileNotFoundError(f"no bundled file '{relative}' (looked in {bundled_root()})")
    return path


def mdp_key(key: str) -> str:
    """An `.mdp` key as GROMACS compares keys: case, '-' and '_' do not matter."""
    return key.strip().lower().replace("-", "").replace("_", "")


def read_mdp(path: str | os.PathLike) -> dict[str, str]:
    """Settings of an `.mdp` file by normalised key (see `mdp_key`)."""
    settings = {}
    for line in Path(path).read_text().splitlines():
        name, _, value = line.split(";", 1)[0].partition("=")
        if _:
            settings[mdp_key(name)] = value.strip()
    return settings


def _mdp_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def write_mdp(template: str | os.PathLike, dest: str | os.PathLike, **overrides) -> Path:
    """Copy an `.mdp` template to `dest` with keys overridden.

    Keys match as in GROMACS (`ref_t`, `ref-t` and `REF_T` are one key; pass names that are not
    identifiers as `**{"ref-t": 300}`). A value replaces the key's line in place, keys the template
    lacks are appended, and `None` removes the key. Booleans become yes/no, sequences are joined
    with spaces.
    """
    wanted = {mdp_key(k): (k, v) for k, v in overrides.items()}
    lines = []
    for line in Path(template).read_text().splitlines():
        setting = line.split(";", 1)[0]
        if "=" in setting:
            written = setting.split("=", 1)[0].strip()
            if mdp_key(written) in wanted:
                value = wanted.pop(mdp_key(written))[1]
                if value is not None:
                    lines.append(f"{written:<24} = {_mdp_value(value)}")
                continue
        lines.append(line)
    added = [f"{k:<24} = {_mdp_value(v)}" for k, v in wanted.values() if v is not None]
    if added:
        lines += ["", "; set by gmx-deepbackmap", *added]
    dest = Path(dest)
    dest.write_text("\n".join(lines) + "\n")
    return dest
