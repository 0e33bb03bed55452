"""Backmapping: `gmx-dbm backmap` end to end with a tiny random-weight model on two sPS chains,
determinism, trajectories, sampling stages, clear errors, and the bond constraints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.config import DEFAULTS, STRAINED_PAIR, STRAINED_TERM, SamplerConfig
from gmx_deepbackmap.constraints import Constraints, bond_constraints, moving_only, project_bonds, restore_bonds
from gmx_deepbackmap.environment import plan_system
from gmx_deepbackmap.errors import InputError
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.model import MODELS_DIR, load_model, new_model, save_model
from gmx_deepbackmap.networks import Generator, NetworkConfig
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.sampling import (
    Pipeline,
    backmap_frame,
    build_pipeline,
    native_bfloat16,
    noise_scale_for,
    prepare_system,
    repair,
    schedules,
    uses_bfloat16,
)  # repair, schedules: modules whose thresholds tests lower
from gmx_deepbackmap.sampling.forward import ForwardPass
from gmx_deepbackmap.sampling.schedules import (
    mirror_schedule,
    outlier_steps,
    repair_schedule,
    repair_steps,
    step_templates,
)
from gmx_deepbackmap.stereo import handedness, learn_stereo, system_stereo
from gmx_deepbackmap.structure import Frame, read_frames, write_frames
from gmx_deepbackmap.topology import read_topology
from gmx_deepbackmap.voxels import Grid

CHAINS, BEADS_PER_CHAIN, ATOMS_PER_CHAIN = 2, 20, 162
FAST = ["--gibbs-sweeps", "1", "--orientations", "2", "--repair-rounds", "1", "--no-progress"]  # a few seconds a run


def write_system(folder: Path, sps_data: Path, rename: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """A topology of two PS1 chains (the bundled force field) and the PS1 mapping, in `folder`;
    `rename` = (old, new) renames one atom in both (a molecule the other model does not know)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundled_path("sps/posres.itp"), folder / "posres.itp")
    itp, ps1_map = bundled_path("sps/topol_PS1.itp").read_text(), bundled_path("sps/PS1.map").read_text()
    if rename:
        itp, ps1_map = (re.sub(rf"\b{rename[0]}\b", rename[1], text) for text in (itp, ps1_map))
    (folder / "topol_PS1.itp").write_text(itp)
    (folder / "PS1.map").write_text(ps1_map)
    top = bundled_path("sps/topol.top").read_text()
    (folder / "topol.top").write_text(re.sub(r"^PS1\s+\d+\s*$", f"PS1    {CHAINS}", top, flags=re.MULTILINE))
    return folder / "topol.top", folder / "PS1.map"


def write_model(path: Path, top: Path, mapping: Path, stereo: dict | None = None, training: dict | None = None) -> Path:
    """A random-weight model (tiny network) for the system of `top` and `mapping`, with chiral
    centres `stereo` (none by default) and training config `training` (empty by default)."""
    topology = read_topology(top)
    cg_map = read_mapping(mapping, topology)
    plan = plan_system(topology, cg_map)
    torch.manual_seed(0)
    network = NetworkConfig(
        width=4, noise_dim=4, n_atom_types=len(plan.layout.atom_types), n_env_channels=plan.layout.n_channels
    )
    grid = Grid()
    model = new_model(
        Generator(network),
        network,
        grid,
        grid.length / 2 + 2 * grid.sigma,
        plan,
        topology,
        cg_map,
        training or {},
        stereo or {},
    )
    return save_model(model, path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches here are tiny: one thread beats several, by far on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def system(tmp_path_factory, sps_data) -> dict[str, Path]:
    """Two PS1 chains: topology, mapping, CG structure (the first 40 beads of cg.gro, original box),
    a two-frame CG trajectory and a tiny model."""
    folder = tmp_path_factory.mktemp("backmap")
    top, mapping = write_system(folder, sps_data)
    lines = (sps_data / "cg.gro").read_text().splitlines()
    n = CHAINS * BEADS_PER_CHAIN
    gro = folder / "cg.gro"
    gro.write_text("\n".join([lines[0], str(n), *lines[2 : 2 + n], lines[-1]]) + "\n")
    frame = read_frames(gro)[0]
    second = Frame(frame.positions + 0.05, frame.box, time=10.0, step=1)
    names = [line[10:15].strip() for line in lines[2 : 2 + n]]
    xtc = folder / "cg.xtc"
    write_frames(xtc, names, ["PS1"] * n, np.repeat(np.arange(1, CHAINS + 1), BEADS_PER_CHAIN), [frame, second])
    aa = read_frames(sps_data / "aa.gro")[0]
    n_atoms = CHAINS * ATOMS_PER_CHAIN
    stereo = learn_stereo(read_topology(top), [(torch.as_tensor(aa.positions[:n_atoms]), torch.as_tensor(aa.box))])
    model = write_model(
        folder / "tiny.pt",
        top,
        mapping,
        stereo,  # the sampler's stereo check runs
        training={"temperature": 568.0},
    )
    return {"top": top, "map": mapping, "gro": gro, "xtc": xtc, "model": model}


def run(system: dict[str, Path], output: Path | None, *extra: str, structure: Path | None = None):
    """`gmx-dbm backmap` of `system` with the fast settings (None: no -o)."""
    args = [
        "backmap",
        "-s",
        str(structure or system["gro"]),
        "-p",
        str(system["top"]),
        "-m",
        str(system["map"]),
        "--model",
        str(system["model"]),
        *(["-o", str(output)] if output is not None else []),
        *FAST,
        *extra,
    ]
    return CliRunner().invoke(main, args)


def sampling_inputs(system: dict[str, Path], config: SamplerConfig = DEFAULTS):
    """Topology, tiny model, system parts prepared for `config` and first CG frame of `system`,
    for `backmap_frame`."""
    topology = read_topology(system["top"])
    model = load_model(system["model"])
    return (
        topology,
        model,
        prepare_system(model, topology, read_mapping(system["map"], topology), config.constrain, config.thermal),
        read_frames(system["gro"])[0],
    )


def sample_stages(system: dict[str, Path], config: SamplerConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One frame of `system` sampled with `config`: the positions, and a copy of them after each
    stage by stage name."""
    _, model, parts, cg = sampling_inputs(system, config)
    seen = {}
    x = backmap_frame(model, parts, cg.positions, cg.box, config, trace=seen.setdefault)
    return x, seen


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def backmapped(system, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "aa.gro"
    result = run(system, out, "--seed", "5")
    assert result.exit_code == 0, result.output
    return out


def test_backmap_writes_the_topology_atoms_whole_in_the_cg_box(backmapped, system, sps_data):
    ours = backmapped.read_text().splitlines()
    reference = (sps_data / "aa.gro").read_text().splitlines()
    n = CHAINS * ATOMS_PER_CHAIN
    assert int(ours[1]) == n
    assert [line[:20] for line in ours[2 : 2 + n]] == [line[:20] for line in reference[2 : 2 + n]]  # resnr, names, nr
    assert np.allclose(read_frames(backmapped)[0].box, read_frames(system["gro"])[0].box, atol=1e-5)
    x = read_frames(backmapped)[0].positions
    bonds = bond_constraints(read_topology(system["top"]))
    lengths = np.linalg.norm(x[bonds.pairs[:, 1]] - x[bonds.pairs[:, 0]], axis=1)  # no minimum image: whole
    assert np.abs(lengths - bonds.lengths.numpy()).max() < 0.002  # constrained, up to .gro precision


def test_same_seed_same_structure_other_seed_other_structure(backmapped, system, tmp_path):
    again, other = tmp_path / "again.gro", tmp_path / "other.gro"
    assert run(system, again, "--seed", "5").exit_code == 0
    assert run(system, other, "--seed", "6").exit_code == 0
    first = read_frames(backmapped)[0].positions
    assert np.array_equal(first, read_frames(again)[0].positions)
    assert np.abs(first - read_frames(other)[0].positions).max() > 0.01


def test_ranking_picks_other_turns_and_is_checked(backmapped, system, tmp_path):
    """`--ranking all` also counts the placed atoms' own bonded terms: other turns win."""
    ranked = tmp_path / "all.gro"
    assert run(system, ranked, "--seed", "5", "--ranking", "all").exit_code == 0
    assert not np.array_equal(read_frames(backmapped)[0].positions, read_frames(ranked)[0].positions)
    with pytest.raises(InputError, match="ranking 'ideal': expected one of environment, all"):
        SamplerConfig(ranking="ideal")


def test_temperature_sets_the_last_stage_and_scales_the_noise_on_request(backmapped, system, tmp_path):
    """The frames' temperature defaults to the model's training temperature; another one changes
    what the last stage draws (with --thermal planar-hydrogens: those hydrogens only), and with
    --scale-noise the generated atoms too. A model that records none needs --temperature (or
    --thermal none), and --scale-noise needs T_train."""
    heavy = read_topology(system["top"]).elements != "H"

    def positions(name: str, *extra: str) -> np.ndarray:
        result = run(system, tmp_path / name, "--seed", "5", *extra)
        assert result.exit_code == 0, result.output
        return read_frames(tmp_path / name)[0].positions

    trained = read_frames(backmapped)[0].positions
    assert np.array_equal(trained, positions("568.gro", "--temperature", "568"))
    fallback = run(system, tmp_path / "default.gro", "--seed", "5").output
    assert "No --temperature: the CG frames are taken to be at the model's training temperature, 568 K" in fallback
    assert "No --temperature" not in run(system, tmp_path / "given.gro", "--temperature", "313").output
    assert not np.array_equal(trained[heavy], positions("313.gro", "--temperature", "313")[heavy])
    planar = positions("568-planar.gro", "--thermal", "planar-hydrogens")
    cold = positions("313-planar.gro", "--temperature", "313", "--thermal", "planar-hydrogens")
    assert np.array_equal(planar[heavy], cold[heavy]) and not np.array_equal(planar, cold)
    scaled = positions("313-scaled.gro", "--temperature", "313", "--scale-noise", "--thermal", "none")
    assert not np.array_equal(positions("none.gro", "--thermal", "none")[heavy], scaled[heavy])
    assert noise_scale_for(load_model(system["model"]), 313.0) == pytest.approx((313 / 568) ** 0.5)

    bare = write_model(tmp_path / "bare.pt", system["top"], system["map"], load_model(system["model"]).stereo)
    assert_one_line_error(
        run({**system, "model": bare}, tmp_path / "bare.gro"),
        "bare.pt: the last stage samples at the temperature of the CG frames",
        "--temperature",
    )
    assert_one_line_error(
        run({**system, "model": bare}, tmp_path / "bare.gro", "--temperature", "313", "--scale-noise"),
        "bare.pt: the model does not record the temperature",
    )
    assert run({**system, "model": bare}, tmp_path / "bare.gro", "--thermal", "none").exit_code == 0
    assert run(system, tmp_path / "zero.gro", "--temperature", "0").exit_code == 2  # click's usage error


def test_stages_report_each_pass_and_the_thermal_sweeps_last(system):
    config = SamplerConfig(gibbs_sweeps=2, orientations=2, repair_rounds=0)
    x, seen = sample_stages(system, config)
    assert list(seen) == [
        "forward",
        "sweep 1",
        "sweep 2",
        "bonds restored",
        "centres mirrored",
        "molecules fitted",
        "thermalised",
    ]
    assert list(seen) == build_pipeline(config).names  # the trace is the pipeline's
    assert np.array_equal(seen["thermalised"], x)
    assert not np.array_equal(seen["sweep 1"], seen["sweep 2"])  # copies, not views of the frame


def test_stages_follow_the_config(system):
    """Turning a stage off is a setting: no repair rounds, no bond restoration, no fit, no last stage."""
    config = SamplerConfig(gibbs_sweeps=1, repair_rounds=2, constrain=False, fit=False, thermal="none")
    names = build_pipeline(config).names
    assert names == ["forward", "sweep 1", "repair 1", "repair 2", "least strained", "centres mirrored"]


def test_precision_picks_bfloat16_where_the_cpu_has_it_and_is_checked(system):
    assert uses_bfloat16("auto", "cpu") == native_bfloat16("cpu")
    assert not uses_bfloat16("auto", "cuda") and not uses_bfloat16("float32", "cpu")
    with pytest.raises(InputError, match="precision 'half': expected one of auto, float32, bfloat16"):
        SamplerConfig(precision="half")
    _, model, parts, cg = sampling_inputs(system)
    forward_only = Pipeline((ForwardPass(orientations=1),))  # one turn: nothing to rank, the network alone
    single, half = (
        backmap_frame(model, parts, cg.positions, cg.box, SamplerConfig(precision=p), pipeline=forward_only)
        for p in ("float32", "bfloat16")
    )
    assert np.isfinite(half).all() and np.abs(half - single).max() < 0.05  # the same atoms, rounded products


def test_every_recorded_centre_ends_in_its_handedness_with_bonds_at_b0(system):
    """The random tiny model inverts and flattens centres; they are mirrored and lifted at the end,
    their hydrogens re-placed and put on their bonds, and only the rigid fit of each molecule onto
    its beads moves them afterwards (which keeps every handedness and bond)."""
    config = SamplerConfig(gibbs_sweeps=1, orientations=2, repair_rounds=0, thermal="none")
    topology, model, parts, cg = sampling_inputs(system, config)
    x, seen = sample_stages(system, config)
    assert list(seen)[-2:] == ["centres mirrored", "molecules fitted"]
    atoms, signs, _ = system_stereo(topology, model.stereo)
    box = torch.as_tensor(cg.box)
    assert handedness(torch.as_tensor(x), box, atoms[:, 0], atoms[:, 1:]).tolist() == signs.tolist()
    pairs, lengths = parts.constraints.pairs, parts.constraints.lengths
    bonds = minimum_image(torch.as_tensor(x)[pairs[:, 1]] - torch.as_tensor(x)[pairs[:, 0]], box).norm(dim=-1)
    to_hydrogen = torch.as_tensor(topology.elements[pairs.numpy()] == "H").any(1)
    assert ((bonds - lengths).abs() / lengths)[to_hydrogen].max() < 1e-3  # as restore_bonds leaves them
    assert (bonds - lengths).square().mean().sqrt() < 0.002  # flat centres lifted off their neighbours' plane


def test_mirroring_re_places_side_groups_whole_and_the_centres_beads_hydrogens_only(system):
    topology, model, parts, cg = sampling_inputs(system)
    plan = parts.plan
    atoms, _, _ = system_stereo(topology, model.stereo)
    no_neighbours = torch.full((len(plan.bead_type), 1), -1)
    heavy, hydrogens = mirror_schedule(plan, no_neighbours, atoms[:1], atoms[:, 0])
    centre_bead = plan.atom_owner[atoms[0, 0]]
    side = set(plan.atom_owner[atoms[0, 1:]].tolist()) - set(plan.atom_owner[atoms[:, 0]].tolist())
    assert side  # sPS: the phenyl ring of the centre's monomer
    assert (
        sorted(np.concatenate(heavy).tolist())
        == np.flatnonzero(np.isin(plan.step_bead, list(side)) & plan.step_heavy).tolist()
    )
    redone = np.concatenate(hydrogens)
    assert not plan.step_heavy[redone].any()
    assert centre_bead in plan.step_bead[redone] and side <= set(plan.step_bead[redone].tolist())


def test_outliers_are_judged_among_copies_of_the_same_step():
    energy = np.r_[np.arange(10.0), 200.0, 5.0, 5.0, 900.0]
    templates = np.r_[np.zeros(11, dtype=int), np.ones(3, dtype=int)]
    # the 200 among 0..9 is one; the 900 is not judged: its template has only 3 copies
    assert np.flatnonzero(outlier_steps(energy, templates)).tolist() == [10]


def test_repairs_re_place_whole_beads(system):
    topology = read_topology(system["top"])
    plan = plan_system(topology, read_mapping(system["map"], topology), load_model(system["model"]).layout)
    templates = step_templates(plan)
    assert len(np.unique(templates)) == len(plan.step_bead) // CHAINS  # one template per step of a chain
    heavy = np.flatnonzero(plan.step_heavy)[0]
    outliers = np.zeros(len(plan.step_bead), dtype=bool)
    outliers[heavy] = True
    no_neighbours = torch.full((len(plan.bead_type), 1), -1)
    redone = np.concatenate(repair_schedule(plan, no_neighbours, outliers))
    assert sorted(redone.tolist()) == np.flatnonzero(plan.step_bead == plan.step_bead[heavy]).tolist()


def test_strained_steps_are_repaired_in_every_round_outliers_in_the_first():
    energy = np.r_[np.arange(10.0), 200.0]
    pair = np.r_[np.zeros(5), STRAINED_PAIR + 1, np.zeros(5)]
    term = np.r_[np.zeros(7), STRAINED_TERM + 1, np.zeros(3)]
    templates = np.zeros(11, dtype=int)
    assert np.flatnonzero(repair_steps(energy, pair, term, templates, outliers_too=True)).tolist() == [5, 7, 10]
    assert np.flatnonzero(repair_steps(energy, pair, term, templates, outliers_too=False)).tolist() == [5, 7]


def test_repairs_place_each_colour_whole(system):
    """Neighbouring beads are repaired one after the other, each with its hydrogens before the next
    bead's heavy atoms, so none is ranked against hydrogens its neighbour's heavy atoms have left."""
    topology = read_topology(system["top"])
    plan = plan_system(topology, read_mapping(system["map"], topology), load_model(system["model"]).layout)
    a, b = 0, 1
    neighbours = torch.full((len(plan.bead_type), 1), -1)
    neighbours[a, 0], neighbours[b, 0] = b, a
    batches = repair_schedule(plan, neighbours, np.isin(plan.step_bead, [a, b]))
    order = [(int(plan.step_bead[batch[0]]), bool(plan.step_heavy[batch[0]])) for batch in batches]
    assert all(len(np.unique(plan.step_bead[batch])) == 1 for batch in batches)
    first, second = order[0][0], b if order[0][0] == a else a
    assert [bead for bead, _ in order] == sorted([bead for bead, _ in order], key=lambda x: x != first)
    assert order[-1][0] == second
    for bead in (a, b):
        phases = [heavy for x, heavy in order if x == bead]
        assert phases == sorted(phases, reverse=True) and phases[0] and not phases[-1]  # heavy, then hydrogens


def test_repair_rounds_follow_the_sweeps(system, monkeypatch):
    monkeypatch.setattr(schedules, "MIN_COPIES", CHAINS)  # two chains: every template has two copies,
    monkeypatch.setattr(schedules, "OUTLIER_MADS", -1.0)  # and every step is an outlier
    config = SamplerConfig(gibbs_sweeps=1, orientations=2, repair_rounds=2, constrain=False, thermal="none")
    _, seen = sample_stages(system, config)
    assert list(seen)[:5] == ["forward", "sweep 1", "repair 1", "repair 2", "least strained"]
    assert not np.array_equal(seen["sweep 1"], seen["repair 1"])  # every bead re-placed


def test_repairs_end_on_the_least_strained_frame_they_passed(system, monkeypatch):
    """Every step counts as strained (thresholds below any energy): each round re-places every bead,
    and the frame kept is the one of the sweep or a round with the least summed excess strain."""
    monkeypatch.setattr(schedules, "STRAINED_PAIR", -1e9)
    monkeypatch.setattr(repair, "STRAINED_PAIR", -1e9)
    config = SamplerConfig(gibbs_sweeps=1, orientations=2, repair_rounds=2, constrain=False, thermal="none")
    _, seen = sample_stages(system, config)
    kept = [name for name in ("sweep 1", "repair 1", "repair 2") if np.array_equal(seen[name], seen["least strained"])]
    assert len(kept) == 1


def test_trajectory_output_and_frame_selection(system, tmp_path):
    from MDAnalysis.coordinates.XTC import XTCReader

    both, last = tmp_path / "aa.xtc", tmp_path / "last.xtc"
    result = run(system, both, "-f", str(system["xtc"]))
    assert result.exit_code == 0, result.output
    assert "Backmapped 2 frames" in result.output
    assert run(system, last, "-f", str(system["xtc"]), "--frames", "1:").exit_code == 0
    frames, single = ([ts.copy() for ts in XTCReader(str(path))] for path in (both, last))
    assert len(frames) == 2 and len(single) == 1 and frames[0].n_atoms == CHAINS * ATOMS_PER_CHAIN
    assert frames[1].time == pytest.approx(10.0)
    assert np.array_equal(frames[1].positions, single[0].positions)  # a frame's seed is its own


def test_chunked_run_resumes_and_merges_to_the_unchunked_trajectory(system, tmp_path):
    from MDAnalysis.coordinates.XTC import XTCReader

    full, merged, work = tmp_path / "full.xtc", tmp_path / "merged.xtc", tmp_path / "chunks"
    assert run(system, full, "-f", str(system["xtc"]), "--seed", "3").exit_code == 0
    chunked = ["--workdir", str(work), "--chunk-size", "1", "-f", str(system["xtc"]), "--seed", "3"]
    result = run(system, None, *chunked)
    assert result.exit_code == 0, result.output
    kept = (work / "chunk00000.xtc").stat().st_mtime_ns
    (work / "chunk00001.xtc").unlink()
    merge = CliRunner().invoke(main, ["merge", str(work), "-o", str(merged)])
    assert merge.exit_code != 0 and "1 of 2 chunks missing (chunk00001.xtc)" in merge.output
    assert run(system, merged, *chunked).exit_code == 0  # redoes the missing chunk only, then merges
    assert (work / "chunk00000.xtc").stat().st_mtime_ns == kept
    ours, theirs = ([ts.positions.copy() for ts in XTCReader(str(p))] for p in (merged, full))
    assert len(ours) == len(theirs) == 2 and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    other = run(system, merged, *chunked[:-1], "4")  # another seed: the folder belongs to another run
    assert_one_line_error(other, "chunks of another run")
    recorded = json.loads((work / "manifest.json").read_text())["run"]["sampler"]
    assert SamplerConfig.from_dict(recorded) == SamplerConfig(gibbs_sweeps=1, orientations=2, repair_rounds=1, seed=3)


def test_model_files_record_the_sampler_config(system):
    assert SamplerConfig.from_dict(load_model(system["model"]).sampler) == DEFAULTS


# --------------------------------------------------------------------------- bad input


def test_cg_structure_with_the_wrong_bead_count(system, tmp_path):
    lines = system["gro"].read_text().splitlines()
    short = tmp_path / "short.gro"
    short.write_text("\n".join([lines[0], "39", *lines[2:-2], lines[-1]]) + "\n")
    result = run(system, tmp_path / "aa.gro", structure=short)
    assert_one_line_error(result, str(short), "39 atoms", "describes 40")
    assert not (tmp_path / "aa.gro").exists()


def test_model_of_another_molecule_is_refused(system, tmp_path, sps_data):
    top, mapping = write_system(tmp_path / "renamed", sps_data, rename=("H161", "HT"))
    other = write_model(tmp_path / "other.pt", top, mapping)
    result = run({**system, "model": other}, tmp_path / "aa.gro")
    assert_one_line_error(result, str(other), "'PS1' differs from the one the model was trained on")


def test_missing_model_file(system, tmp_path):
    result = run({**system, "model": tmp_path / "nowhere.pt"}, tmp_path / "aa.gro")
    assert_one_line_error(result, "model", "nowhere.pt", "not found")


def test_bundled_model_backmaps_the_sps_melt_with_nothing_else(sps_data, tmp_path):
    """`gmx-dbm backmap -s cg.gro -o aa.gro`: bundled topology, mapping and model (one cheap pass)."""
    if not (MODELS_DIR / "sps-568.pt").is_file():
        pytest.skip("no bundled model")
    out = tmp_path / "aa.gro"
    result = CliRunner().invoke(
        main,
        [
            "backmap",
            "-s",
            str(sps_data / "cg.gro"),
            "-o",
            str(out),
            "--gibbs-sweeps",
            "0",
            "--orientations",
            "1",
            "--repair-rounds",
            "0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    topology = read_topology(bundled_path("sps/topol.top"))
    frame = read_frames(out, n_atoms=topology.n_atoms)[0]
    np.testing.assert_allclose(frame.box, read_frames(sps_data / "cg.gro")[0].box, atol=1e-3)
    lines = out.read_text().splitlines()[2:-1]
    assert [line[10:15].strip() for line in lines] == list(topology.atom_names)


def test_unknown_bundled_model_name_is_named(system, tmp_path):
    result = CliRunner().invoke(
        main, ["backmap", "-s", str(system["gro"]), "--model", "sps-999", "-o", str(tmp_path / "aa.gro")]
    )
    assert_one_line_error(result, "model 'sps-999' not found")


# --------------------------------------------------------------------------- constraints


def bond_rms(x: torch.Tensor, box: torch.Tensor, c: Constraints) -> float:
    d = minimum_image(x[c.pairs[:, 1]] - x[c.pairs[:, 0]], box)
    return float((d.norm(dim=-1) - c.lengths).square().mean().sqrt())


@pytest.fixture
def distorted_chain(one_chain) -> tuple[torch.Tensor, torch.Tensor, Constraints]:
    """A whole sPS chain (rings: closed bond cycles) with 0.02 nm noise, half of it across the box
    edge: positions, box, constraints."""
    gro, top = one_chain
    frame = read_frames(gro)[0]
    box = torch.as_tensor(frame.box)
    x = torch.as_tensor(frame.positions) + 0.02 * torch.randn(
        len(frame.positions), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    x = torch.where(torch.arange(len(x))[:, None] % 2 == 0, x + box[0], x)  # bonds across the boundary
    return x, box, bond_constraints(read_topology(top))


def angle_change(x: torch.Tensor, y: torch.Tensor, box: torch.Tensor, c: Constraints) -> float:
    """Mean absolute change (degrees) of the bond-graph angles from x to y."""

    def angles(z):
        u, v = (minimum_image(z[c.angles[:, k]] - z[c.angles[:, 1]], box) for k in (0, 2))
        return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))

    return float((angles(y) - angles(x)).abs().mean().rad2deg())


def test_projection_puts_a_distorted_chain_back_on_its_bond_lengths(distorted_chain):
    x, box, constraints = distorted_chain
    before = bond_rms(x, box, constraints)
    after = bond_rms(project_bonds(x, box, constraints), box, constraints)
    print(f"bond RMS deviation: {before:.4f} nm before, {after:.2e} nm after")
    assert before > 0.01 and after < 2e-6  # stops at 1e-5 of the shortest length


def test_restoring_bond_lengths_keeps_the_angles_that_projection_bends(distorted_chain):
    x, box, constraints = distorted_chain
    restored, projected = restore_bonds(x, box, constraints), project_bonds(x, box, constraints)
    kept, bent = (angle_change(x, y, box, constraints) for y in (restored, projected))
    print(f"mean angle change: {kept:.2f} degrees restored, {bent:.2f} projected")
    assert bond_rms(restored, box, constraints) < 2e-6
    assert kept < bent / 2


def test_restoring_only_some_atoms_leaves_the_others_where_they_stand(distorted_chain):
    x, box, constraints = distorted_chain
    start = project_bonds(x, box, constraints)
    moving = np.arange(16, 32)  # the second monomer
    start[moving] += 0.02 * torch.randn(len(moving), 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    restored = restore_bonds(start, box, moving_only(constraints, moving))
    held = np.setdiff1d(np.arange(len(x)), moving)
    assert torch.equal(restored[held], start[held])
    assert bond_rms(start, box, constraints) > 0.005 and bond_rms(restored, box, constraints) < 2e-6


def test_without_p_the_models_bundled_topology_is_used(system):
    """`backmap` without -p builds the system the model was trained on; a model trained on a
    topology that is not bundled needs -p, said in one line."""
    from gmx_deepbackmap.model import default_topology

    assert default_topology("sps-568") == bundled_path("sps/topol.top")
    result = CliRunner().invoke(
        main, ["backmap", "-s", str(system["gro"]), "--model", str(system["model"]), "-o", "x.gro", *FAST]
    )
    assert_one_line_error(result, "give the system's topology with -p", "tiny.pt")
