"""Model files: the generator's weights and everything needed to use them safely.

A model file is a plain dict of tensors, numbers, strings and lists (loadable with
`torch.load(weights_only=True)`): the generator weights, the network and grid settings, the
feature layout, the identity of every molecule type it was trained on (atom names and types, bead
names and types, owned atoms), the training config, the sampler settings and the package version. Using a model on a
molecule it does not describe is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import __version__
from .config import DEFAULTS
from .environment import SystemPlan
from .errors import InputError
from .mapping import Mapping
from .networks import Generator, NetworkConfig
from .reconstruction import FeatureLayout
from .structure import atomic_output
from .topology import Topology
from .voxels import Grid

FORMAT = "gmx-deepbackmap-model"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parent / "models"  # models that ship with the package


@dataclass
class DeepBackmapModel:
    """A trained generator with the settings that define its inputs."""

    generator: Generator
    network: NetworkConfig
    grid: Grid
    half_extent: float
    layout: FeatureLayout
    molecules: dict[str, dict]  # molecule type -> identity (see `molecule_identity`)
    training: dict
    stereo: dict[str, dict] = field(default_factory=dict)  # molecule type -> chiral centres (`stereo.learn_stereo`)
    # The sampler settings of the package that wrote the file (`SamplerConfig.as_dict`; empty in older files):
    # what its benchmarks ran with unless they say otherwise.
    sampler: dict = field(default_factory=DEFAULTS.as_dict)
    version: str = __version__

    def check_system(self, topology: Topology, mapping: Mapping, path: str | os.PathLike) -> None:
        """Refuse molecule types the model was not trained on, or that changed since."""
        for name in dict.fromkeys(n for n, _ in topology.molecules):
            if name not in self.molecules:
                raise InputError(
                    f"model has no molecule type '{name}' (it knows {', '.join(sorted(self.molecules))})", path
                )
            if self.molecules[name] != molecule_identity(topology, mapping, name):
                raise InputError(
                    f"molecule type '{name}' differs from the one the model was trained on "
                    "(atom names, types, beads or ownership)",
                    path,
                )
        missing = set(topology.type_names) - set(self.layout.atom_types)
        if missing:
            raise InputError(f"model knows no atom type(s) {', '.join(sorted(missing))}", path)


def molecule_identity(topology: Topology, mapping: Mapping, name: str) -> dict:
    """What must match between training and use: atoms, beads and who reconstructs what."""
    mtype, mmap = topology.molecule_types[name], mapping.molecule_types[name]
    data = {
        "atom_names": list(mtype.atom_names),
        "atom_types": list(mtype.atom_types),
        "beads": [[b.name, b.type, [int(a) for a in b.owned]] for b in mmap.beads],
    }
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return {"n_atoms": mtype.n_atoms, "n_beads": mmap.n_beads, "digest": digest}


def new_model(
    generator: Generator,
    network: NetworkConfig,
    grid: Grid,
    half_extent: float,
    plan: SystemPlan,
    topology: Topology,
    mapping: Mapping,
    training: dict,
    stereo: dict[str, dict],
) -> DeepBackmapModel:
    """Bundle a generator with the identity of the system it is trained on and the handedness of
    its chiral centres."""
    return DeepBackmapModel(
        generator=generator,
        network=network,
        grid=grid,
        half_extent=half_extent,
        layout=plan.layout,
        molecules={n: molecule_identity(topology, mapping, n) for n in plan.plans},
        training=training,
        stereo=stereo,
    )


def model_dict(model: DeepBackmapModel) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": model.version,
        "generator": {k: v.detach().cpu() for k, v in model.generator.state_dict().items()},
        "network": plain_data(asdict(model.network)),
        "grid": asdict(model.grid),
        "half_extent": model.half_extent,
        "layout": model.layout.to_dict(),
        "molecules": model.molecules,
        "training": plain_data(model.training),
        "stereo": model.stereo,
        "sampler": model.sampler,
    }


def save_model(model: DeepBackmapModel, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the model file atomically."""
    with atomic_output(path, overwrite) as tmp:
        torch.save(model_dict(model), tmp)
    return Path(path)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A path as given, or a bundled model by name (e.g. `sps-568`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = MODELS_DIR / f"{name_or_path}.pt"
    if bundled.is_file():
        return bundled
    raise InputError(f"model '{name_or_path}' not found (neither a file nor a bundled model)", path)


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> DeepBackmapModel:
    """Load a model file (weights only: no code runs on load) and rebuild its generator."""
    path = resolve_model(name_or_path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise InputError(f"not a readable model file ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError("not a gmx-deepbackmap model file", path)
    if data["format_version"] > FORMAT_VERSION:
        raise InputError(
            f"model file format {data['format_version']} is newer than this package reads "
            f"({FORMAT_VERSION}); upgrade gmx-deepbackmap",
            path,
        )
    network = NetworkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["network"].items()})
    generator = Generator(network)
    generator.load_state_dict(data["generator"])
    generator.to(device).eval()
    return DeepBackmapModel(
        generator=generator,
        network=network,
        grid=Grid(**data["grid"]),
        half_extent=data["half_extent"],
        layout=FeatureLayout.from_dict(data["layout"]),
        molecules=data["molecules"],
        training=data["training"],
        stereo=data.get("stereo", {}),  # older files carry none: handedness then unchecked
        sampler=data.get("sampler", {}),
        version=data["package_version"],
    )


def plain_data(value):
    """Tuples to lists, recursively: the model file holds JSON-like data only."""
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def default_topology(name_or_path: str | os.PathLike) -> Path:
    """The topology `gmx-dbm backmap` uses without `-p`: the bundled one the model was trained on
    (its recorded training topology lies in a bundled `topologies/<system>/` folder). A model
    trained on any other topology needs `-p`, which is an `InputError` naming the one it used."""
    from .bundled import bundled_root

    model = load_model(name_or_path)
    recorded = Path(model.training.get("topology", ""))
    parts = recorded.parts
    if "topologies" in parts:
        bundled = bundled_root().joinpath(*parts[len(parts) - parts[::-1].index("topologies") :])
        if bundled.is_file():
            return bundled
    raise InputError(
        f"no -p given, and the model was trained on '{recorded}', not on a bundled topology: "
        "give the system's topology with -p",
        resolve_model(name_or_path),
    )
