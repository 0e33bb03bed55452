"""Mappings: the sPS mapping reproduces the published CG files; bad mapping files fail on one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.errors import InputError
from gmx_deepbackmap.mapping import map_to_cg, read_mapping
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology

TOLERANCE = 0.002  # nm: both files are .xtc, 0.001 nm precision each


@pytest.fixture(scope="module")
def topology():
    return read_topology(bundled_path("sps/topol.top"))


@pytest.fixture(scope="module")
def ps1_map() -> str:
    return bundled_path("sps/PS1.map").read_text()


def max_deviation(mapped: list, reference: list) -> float:
    """Largest minimum-image distance between corresponding beads of all frames."""
    x = torch.as_tensor(np.stack([f.positions for f in mapped]))
    ref = torch.as_tensor(np.stack([f.positions for f in reference]))
    box = torch.as_tensor(np.stack([f.box for f in reference]))
    return float(minimum_image(x - ref, box[:, None]).norm(dim=-1).max())


# --------------------------------------------------------------------------- the sPS mapping


@pytest.mark.parametrize("temperature, use_bundled", [("t568", False), ("t313", True)])
def test_map_reproduces_reference_trajectories(tmp_path, sps_data, temperature, use_bundled):
    """`gmx-dbm map` on the AA trajectories gives the published CG trajectories (with -m, and with
    the bundled default)."""
    out = tmp_path / "cg.xtc"
    args = [
        "map",
        "-s",
        str(sps_data / "aa.gro"),
        "-f",
        str(sps_data / temperature / "aa.xtc"),
        "-p",
        str(bundled_path("sps/topol.top")),
        "-o",
        str(out),
    ]
    if not use_bundled:
        args += ["-m", str(bundled_path("sps/PS1.map"))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    mapped = read_frames(sps_data / "cg.gro", out)
    reference = read_frames(sps_data / "cg.gro", sps_data / temperature / "cg.xtc")
    assert len(mapped) == len(reference) == 78
    deviation = max_deviation(mapped, reference)
    print(f"{temperature}: max deviation from cg.xtc {deviation:.4f} nm over 78 frames x 720 beads")
    assert deviation <= TOLERANCE
    np.testing.assert_allclose([f.box for f in mapped], [f.box for f in reference], atol=1e-4)


def test_map_gro_names_residues_and_frames(tmp_path, sps_data):
    """A single frame to .gro: bead names, residues and box as in the published cg.gro."""
    out = tmp_path / "cg.gro"
    map_to_cg(sps_data / "aa.gro", bundled_path("sps/topol.top"), None, out)
    ours, theirs = out.read_text().splitlines(), (sps_data / "cg.gro").read_text().splitlines()
    assert [line[:15] for line in ours[1:-1]] == [line[:15] for line in theirs[1:-1]]
    assert max_deviation(read_frames(out), read_frames(sps_data / "cg.gro")) <= TOLERANCE
    with pytest.raises(InputError, match="cannot write 3 frames"):
        map_to_cg(
            sps_data / "aa.gro",
            bundled_path("sps/topol.top"),
            None,
            out,
            trajectory=sps_data / "t313" / "aa.xtc",
            frames=slice(0, 3),
        )


def test_sps_mapping_structure(topology):
    """Owners, frame references and the bead graph of PS1 as MAPPING.md describes them."""
    mapping = read_mapping(bundled_path("sps/PS1.map"), topology)
    ps1 = mapping.molecule_types["PS1"]
    names = [b.name for b in ps1.beads]
    assert names == [f"{kind}{k}" for k in range(1, 11) for kind in "BS"]
    assert [names[b.frame_reference] for b in ps1.beads[:4]] == ["B2", "B1", "B1", "B2"]
    atom = {name: i for i, name in enumerate(topology.molecule_types["PS1"].atom_names)}
    assert [names[ps1.atom_owner[atom[a]]] for a in ("H161", "C5", "C6", "H162", "C149")] == [
        "B1",
        "B1",
        "S1",
        "B10",
        "B10",
    ]
    b2 = ps1.beads[2]
    weight = dict(zip(b2.atoms, b2.weights))
    assert weight[atom["C5"]] == pytest.approx(weight[atom["C18"]] / 2)
    assert len(ps1.bead_bonds) == 19 and [0, 1] in ps1.bead_bonds.tolist()
    assert mapping.n_beads == 720 and mapping.bead_residue_numbers[[0, 20, 719]].tolist() == [1, 2, 36]
    assert mapping.frame_reference[20:22].tolist() == [22, 20] and len(mapping.bead_bonds) == 36 * 19


def test_cg_positions_is_differentiable(topology, sps_data):
    mapping = read_mapping(None, topology)
    frame = read_frames(sps_data / "aa.gro")[0]
    x = torch.tensor(frame.positions, requires_grad=True)
    beads = mapping.cg_positions(x, torch.as_tensor(frame.box), wrap=False)
    beads.sum().backward()
    assert torch.allclose(x.grad.sum(0), torch.full((3,), 720.0, dtype=torch.float64))


# --------------------------------------------------------------------------- bad mapping files


def edited(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD_MAPPINGS = {  # name: (old text, new text, expected message)
    "missing atom": ("  B1    C2\n", "  B1    C2X\n", "atom 'C2X' is not in moleculetype 'PS1'"),
    "owned twice": ("  B1    H161 H1", "  B1    C6 H161 H1", "atom 'C6' owned twice"),
    "never owned": ("  B1    H161 H1", "  B1    H1", "atoms never owned by a bead: H161"),
    "zero weight": ("H4:0.5 C5:0.5 H20", "H4:0 C5:0.5 H20", "weight 0 of atom 'H4' is not positive"),
    "negative weight": ("H4:0.5 C5:0.5 H20", "H4:-0.5 C5:0.5 H20", "weight -0.5 of atom 'H4' is not positive"),
    "malformed weight": ("H4:0.5 C5:0.5 H20", "H4:0.5x C5:0.5 H20", "malformed weight '0.5x' for atom 'H4'"),
    "unknown frame bead": ("  S1    B1u   B1\n", "  S1    B1u   B0\n", "frame reference 'B0' of bead 'S1'"),
    "duplicated bead": ("  S1    B1u   B1\n", "  S1    B1u   B1\n  S1    B1u   B1\n", "bead 'S1' defined twice"),
    "unknown molecule type": (
        "[ moleculetype ]\nPS1\n",
        "[ moleculetype ]\nPS2\n",
        "molecule type 'PS2' is not in the topology",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MAPPINGS))
def test_bad_mapping_names_file_line_and_problem(tmp_path, topology, ps1_map, case):
    old, new, message = BAD_MAPPINGS[case]
    path = tmp_path / "bad.map"
    path.write_text(edited(ps1_map, old, new))
    with pytest.raises(InputError) as error:
        read_mapping(path, topology)
    text = str(error.value)
    print(f"{case}: {text}")
    assert text.startswith(f"{path}:") and message in text and "\n" not in text
    assert re.match(rf"{re.escape(str(path))}:\d+ ", text)  # the line number


def test_modifiers_are_read_and_checked(tmp_path, topology, ps1_map):
    path = tmp_path / "mod.map"
    without = ps1_map.split("[ modifiers ]")[0]  # the bundled sPS modifiers are the baseline's
    path.write_text(without + "\n[ modifiers ]\ntrans H1 C2 C5 C6\nchiral H4 C5 C2 C6 C18\n")
    ps1 = read_mapping(path, topology).molecule_types["PS1"]
    assert [(m.kind, m.atoms) for m in ps1.modifiers] == [("trans", (0, 1, 4, 5)), ("chiral", (3, 4, 1, 5, 17))]
    path.write_text(without + "\n[ modifiers ]\ncis H1 C2 C5\n")
    with pytest.raises(InputError, match="modifier 'cis' takes 4 atom names, found 3"):
        read_mapping(path, topology)


def test_cli_reports_bad_mapping_on_one_line(tmp_path, sps_data, ps1_map):
    path = tmp_path / "bad.map"
    path.write_text(edited(ps1_map, "  B1    C2\n", "  B1    C2X\n"))
    result = CliRunner().invoke(
        main,
        [
            "map",
            "-s",
            str(sps_data / "aa.gro"),
            "-p",
            str(bundled_path("sps/topol.top")),
            "-m",
            str(path),
            "-o",
            str(tmp_path / "cg.gro"),
        ],
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}:") and "C2X" in lines[0]
    assert not (tmp_path / "cg.gro").exists()


# --------------------------------------------------------------------------- structure vs topology


def test_atom_count_mismatch_is_a_clear_error(tmp_path, sps_data):
    lines = (sps_data / "aa.gro").read_text().splitlines()
    gro = tmp_path / "short.gro"
    gro.write_text("\n".join([lines[0], "5831", *lines[2:-2], lines[-1]]) + "\n")
    result = CliRunner().invoke(
        main, ["map", "-s", str(gro), "-p", str(bundled_path("sps/topol.top")), "-o", str(tmp_path / "cg.gro")]
    )
    assert result.exit_code != 0
    assert (
        result.output.strip() == f"Error: {gro}: 5831 atoms, but the topology "
        f"{bundled_path('sps/topol.top')} describes 5832"
    )


def test_a_bead_without_frame_reference_is_oriented_by_the_box_z_axis():
    """`-` in the mapping (a one-bead molecule): the frame's z axis is the box's, not the
    direction to whichever bead comes last in the system."""
    from gmx_deepbackmap.environment import local_frames

    cg = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.5, 1.0], [0.5, 0.5, 0.5]])
    box = torch.eye(3) * 4.0
    beads, reference = torch.tensor([0, 1]), torch.tensor([-1, 0])
    centre, rotation = local_frames(cg, box, beads, reference, torch.zeros(2))
    assert torch.allclose(centre, cg[:2])
    assert torch.allclose(rotation[0, 2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(rotation[1, 2], torch.tensor([2.0, 1.0, 0.0]) / 5**0.5)
    for r in rotation:
        assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
