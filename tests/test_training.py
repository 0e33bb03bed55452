"""Training: environments, tiny end-to-end runs, exact resume, torchrun, SIGTERM."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.environment import FORWARD, GIBBS, gather, near_owners, neighbourhood, plan_system
from gmx_deepbackmap.errors import InputError, TrainingDiverged
from gmx_deepbackmap.generation import environment_densities, reach, rollout
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.model import load_model
from gmx_deepbackmap.networks import Generator, NetworkConfig
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.prior import LocalPrior
from gmx_deepbackmap.reconstruction import BOND, EXCLUDED, HEAVY, HYDROGEN
from gmx_deepbackmap.stereo import (
    MIN_VOLUME,
    StereoCheck,
    chiral_centres,
    equivalent_branches,
    handedness,
    learn_stereo,
    signed_volume,
    system_stereo,
)
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology
from gmx_deepbackmap.training import (
    TrainConfig,
    TrainingLog,
    _check_finite,
    chain_end_beads,
    read_config,
    train,
)

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps" / "train_t568"
TINY = "\n".join(
    [
        'aa = ["{aa}"]',
        'cg = ["{cg}"]',
        'topology = "{top}"',
        "steps = {steps}",
        "batch_size = 4",
        "n_critic = 2",
        "prior_ramp = [0, 2]",
        "checkpoint_every = 1",
        "log_every = 1",
        "seed = 3",
        "[network]",
        "width = 4",
        "noise_dim = 4",
        "",
    ]
)


@pytest.fixture(scope="module")
def sps_system():
    topology = read_topology(bundled_path("sps/topol.top"))
    mapping = read_mapping(None, topology)
    return topology, mapping, plan_system(topology, mapping)


def write_config(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(
        TINY.format(
            aa=TRAIN / "aa" / "90.gro", cg=TRAIN / "cg" / "90.gro", top=bundled_path("sps/topol.top"), steps=steps
        )
    )
    return path


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_reconstruction_order_of_a_chain(sps_system):
    _, _, plan = sps_system
    chain = plan.plans["PS1"]
    assert chain.bead_order[:4] == (0, 1, 2, 3)  # B1 S1 B2 S2: depth-first along the chain
    first, ring = chain.steps[0], chain.steps[1]
    assert (first.phase, first.atoms) == (HEAVY, (1, 4))  # C2 then the CH carbon C5
    assert ring.atoms[0] == 5 and len(ring.atoms) == 6  # the ring starts at ipso C6, bonded to C5
    assert all(s.phase == HYDROGEN for s in chain.steps[20:])
    assert chain.relation[5, 4] == BOND and chain.relation[5, 5] == EXCLUDED


@pytest.fixture(scope="module")
def snapshot(sps_system):
    _, mapping, plan = sps_system
    frame = read_frames(TRAIN / "aa" / "90.gro")[0]
    cg = mapping.cg_positions(frame.positions, frame.box)
    return frame, cg


def environments(plan, frame, cg, angle, shift=(0.0, 0.0, 0.0), score_hidden=False):
    shift = np.asarray(shift)
    positions = near_owners(plan, frame.positions + shift, cg + shift, frame.box)
    hood = neighbourhood(plan, cg + shift, frame.box, reach(TrainConfig().half_extent))
    steps = torch.tensor([0, 1, 25, 700, 1439])
    context = torch.tensor([FORWARD, GIBBS, GIBBS, FORWARD, GIBBS])
    return gather(
        plan,
        hood,
        torch.as_tensor(positions),
        torch.as_tensor(cg + shift),
        torch.as_tensor(frame.box),
        steps,
        context,
        torch.full((5,), float(angle), dtype=torch.float64),
        TrainConfig().half_extent,
        score_hidden=score_hidden,
    )


def sorted_particles(batch):
    """Particles with their channels as seen by the first step, in a canonical order."""
    rows = []
    for b in range(len(batch.particles)):
        keep = batch.channels[b, 0] >= 0
        p = torch.cat([batch.particles[b][keep], batch.channels[b, 0][keep, None].double()], 1)
        rows.append(p[torch.argsort(p[:, 0] * 1e6 + p[:, 1] * 1e3 + p[:, 2])])
    return rows


def test_environment_invariant_to_translation(sps_system, snapshot):
    _, _, plan = sps_system
    frame, cg = snapshot
    a = sorted_particles(environments(plan, frame, cg, 0.3))
    b = sorted_particles(environments(plan, frame, cg, 0.3, shift=np.array([0.37, -1.1, 2.9])))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_rotation_about_the_frame_axis_is_the_free_angle(sps_system, snapshot):
    """A rotation of the frame's angle turns the environment about z by the same angle."""
    _, _, plan = sps_system
    frame, cg = snapshot
    a, b = environments(plan, frame, cg, 0.0), environments(plan, frame, cg, 0.7)
    c, s = math.cos(0.7), math.sin(0.7)
    turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # the same atoms (inside both cubes) have local coordinates related by the turn about z
    for i in range(len(a.particles)):
        ids_a, ids_b = a.env_atoms[i].tolist(), b.env_atoms[i].tolist()
        common = [x for x in ids_a if x >= 0 and x in ids_b]
        pa = a.particles[i][[ids_a.index(x) for x in common]]
        pb = b.particles[i][[ids_b.index(x) for x in common]]
        torch.testing.assert_close(pb, pa @ turn, atol=1e-9, rtol=0)
        torch.testing.assert_close(b.target[i], a.target[i] @ turn, atol=1e-9, rtol=0)


def test_junction_shift_repairs_the_bonds_to_placed_atoms(sps_system, snapshot):
    """A sequence moved off its neighbours is moved back towards them: lower bond energy, and no
    shift for the first step of the forward pass, which has no placed neighbour."""
    topology, _, plan = sps_system
    frame, cg = snapshot
    batch = environments(plan, frame, cg, 0.3)
    prior = LocalPrior(topology, plan)
    assert prior.junction_shift(batch, batch.target).norm(dim=-1).max() < 0.01  # reference bonds ~ b0
    moved = batch.target + torch.tensor([0.04, -0.03, 0.02], dtype=torch.float64)
    shift = prior.junction_shift(batch, moved)
    assert torch.equal(shift[0], torch.zeros(3, dtype=torch.float64))
    before, after = prior.energies(batch, moved)["bond"], prior.energies(batch, moved + shift[:, None])["bond"]
    assert (after[1:] < 0.5 * before[1:]).all()


def test_environment_energy_leaves_out_the_sequences_own_terms(sps_system, snapshot):
    """Without the internal terms the energy is what joins the sequence to its environment: moving
    the sequence rigidly changes both energies alike, and its own terms are what they differ by."""
    topology, _, plan = sps_system
    frame, cg = snapshot
    batch = environments(plan, frame, cg, 0.3)
    prior = LocalPrior(topology, plan)
    moved = batch.target + torch.tensor([0.02, 0.01, -0.03], dtype=torch.float64)
    for name in ("bond", "angle", "proper", "improper"):
        own = [
            prior.energies(batch, x)[name] - prior.energies(batch, x, internal=False)[name]
            for x in (batch.target, moved)
        ]
        torch.testing.assert_close(own[0], own[1])
    ring = 1  # item 1 re-places a phenyl ring: its in-ring angles are its own
    assert (
        prior.energies(batch, batch.target)["angle"][ring]
        > prior.energies(batch, batch.target, internal=False)["angle"][ring]
    )


def test_hidden_hydrogens_enter_the_energy_not_the_network(sps_system, snapshot):
    """Item 1 re-places a ring in a Gibbs sweep: its molecule's hydrogens are hidden from the
    network. With `score_hidden` the energy sees them (the methine H beside the ring among them),
    and the drawn environment is unchanged."""
    topology, _, plan = sps_system
    frame, cg = snapshot
    hidden, scored = environments(plan, frame, cg, 0.3), environments(plan, frame, cg, 0.3, score_hidden=True)
    for x, y in zip(sorted_particles(hidden), sorted_particles(scored)):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    extra = set(scored.env_atoms[1].tolist()) - set(hidden.env_atoms[1].tolist())
    ring = plan.step_bead[1]
    assert extra and all(
        not plan.atom_heavy[a] and plan.atom_molecule[a] == plan.bead_molecule[ring] and plan.atom_owner[a] != ring
        for a in extra
    )
    assert set(scored.env_atoms[0].tolist()) == set(hidden.env_atoms[0].tolist())  # forward: nothing hidden
    prior = LocalPrior(topology, plan)
    assert prior.energies(scored, scored.target)["lj"][1] != prior.energies(hidden, hidden.target)["lj"][1]


def test_strain_finds_one_strained_contact_and_its_bent_joints(sps_system, snapshot):
    topology, _, plan = sps_system
    frame, cg = snapshot
    batch = environments(plan, frame, cg, 0.3)
    prior = LocalPrior(topology, plan)
    total, at_reference, bent = prior.total_and_strain(batch, batch.target)
    torch.testing.assert_close(total, sum(prior.energies(batch, batch.target).values()))
    assert (at_reference < 25.0).all() and (bent < 40.0).all()  # an equilibrated structure
    moved = batch.target.clone()
    atoms = batch.env_atoms[2]
    other = (atoms >= 0) & (
        torch.from_numpy(plan.atom_molecule)[atoms.clamp(min=0)] != plan.atom_molecule[int(batch.sequence_atoms[2, 0])]
    )
    env = int(torch.nonzero(other)[0, 0])  # 0.11 nm from an atom of another molecule
    moved[2, 0] = batch.particles[2, env] + torch.tensor([0.11, 0.0, 0.0], dtype=torch.float64)
    _, worst, bent_moved = prior.total_and_strain(batch, moved)
    assert worst[2] > 1000.0 and torch.equal(worst[[0, 1, 3, 4]], at_reference[[0, 1, 3, 4]])
    assert bent_moved[2] > 40.0 and torch.equal(bent_moved[[0, 1, 3, 4]], bent[[0, 1, 3, 4]])  # its joints bent


def test_sampling_rollout_skips_padded_steps(sps_system, snapshot):
    """The sampler's rollout generates the same atoms as training's for the steps that exist, and
    none for padding (coordinates 0, no environments kept)."""
    _, _, plan = sps_system
    frame, cg = snapshot
    batch = environments(plan, frame, cg, 0.3)
    assert not batch.step_mask.all()  # steps of 2, 6 and 3 to 5 atoms, padded to 6
    config = NetworkConfig(width=4, noise_dim=4, n_env_channels=plan.layout.n_channels)
    generator, grid = Generator(config).eval(), TrainConfig().grid
    static = environment_densities(batch, plan.layout.n_channels, grid).float()
    runs = []
    for sampling in (False, True):
        torch.manual_seed(0)
        with torch.no_grad():
            runs.append(
                rollout(generator, static, batch, grid, config.n_atom_types, config.noise_dim, sampling=sampling)
            )
    (envs, _, full), (none, _, sampled) = runs
    assert envs is not None and none is None
    live = batch.step_mask
    torch.testing.assert_close(sampled[live], full[live])
    assert (sampled[~live] == 0).all()


def test_stereo_is_learned_from_training_frames(sps_system, snapshot):
    """sPS is syndiotactic: the nine backbone CH centres per chain alternate in handedness, in every
    chain alike. A frame plus its mirror image is racemic: no centre recorded."""
    topology, _, plan = sps_system
    frame, cg = snapshot
    x, box = torch.as_tensor(frame.positions), torch.as_tensor(frame.box)
    stereo = learn_stereo(topology, [(x, box)])
    assert stereo["PS1"]["signs"] == [1, -1] * 4 + [1]
    assert stereo["PS1"]["atoms"][0] == [4, 1, 5, 17]  # CH of monomer 1: CH2, ipso, next CH2
    whole = torch.as_tensor(near_owners(plan, frame.positions, cg, frame.box))
    mirror = whole * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert learn_stereo(topology, [(whole, box), (mirror, box)]) == {}


def test_chain_ends_are_the_first_and_last_backbone_bead_of_each_chain(sps_system):
    """The backbone beads of each type have 3 CG bonds but the chain's first and last, which have 2."""
    _, mapping, plan = sps_system
    ends = chain_end_beads(plan)
    assert ends.sum() == 2 * 36 and set(mapping.bead_names[ends]) == {"B1", "B10"}


def test_centres_are_the_carbons_whose_branches_all_differ(sps_system):
    """The 9 backbone CH of each chain are centres: their two chain directions end differently (CH3,
    CH2-phenyl). Atoms with two equivalent branches are not: the CH3, the CH2s, each ring's ipso
    and para carbon (its two ring directions)."""
    topology = sps_system[0]
    centres, _ = chiral_centres(topology)
    assert len(centres) == 324 and set(topology.atom_types[centres]) == {"C"}
    equivalent = equivalent_branches(topology)[:162]
    types = topology.atom_types[:162][equivalent].tolist()
    assert types.count("C") == 11 and types.count("C_AR") == 20  # CH3, 10 CH2; 10 ipso, 10 para
    assert not equivalent[centres[:9]].any()


def test_stereo_check_judges_placements_with_unplaced_neighbours_at_their_beads(sps_system, snapshot):
    """Every heavy step of the reference, placed with the atoms of later beads of its molecule still
    at their beads (the forward pass's view), keeps every recorded centre; the mirror image
    inverts them; without recorded centres nothing is counted."""
    topology, _, plan = sps_system
    frame, cg = snapshot
    box = torch.as_tensor(frame.box)
    stereo = learn_stereo(topology, [(torch.as_tensor(frame.positions), box)])
    check = StereoCheck(plan, *system_stereo(topology, stereo))
    x, beads = torch.as_tensor(near_owners(plan, frame.positions, cg, frame.box)), torch.as_tensor(cg)
    owner, rank = torch.as_tensor(plan.atom_owner), torch.as_tensor(plan.bead_rank)
    molecule = torch.as_tensor(plan.atom_molecule)
    steps = torch.as_tensor(np.flatnonzero(plan.step_heavy))
    atoms = torch.as_tensor(plan.step_atoms)[steps]
    for step, sequence in zip(steps.tolist(), atoms):
        later = (molecule == molecule[sequence[0]]) & (rank[owner] > rank[plan.step_bead[step]])
        forward = torch.where(later[:, None], beads[owner], x)
        assert (
            check.inverted(
                torch.tensor([step]), sequence[None], forward[sequence.clamp(min=0)][None], forward, box
            ).item()
            == 0
        )
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # the box too: molecules cross it
    mirrored = check.inverted(steps, atoms, x[atoms.clamp(min=0)] * flip, x * flip, box * flip)
    assert mirrored.tolist() == (check.of_step[steps] >= 0).sum(1).tolist()  # every centre a step touches
    assert mirrored.sum() == 324 * 3  # each centre: the heavy steps of B_k (C, CH2), S_k (ipso), B_k+1 (CH2)
    empty = StereoCheck(plan, np.zeros((0, 4), dtype=np.int64), np.zeros(0))
    assert empty.inverted(steps, atoms, x[atoms.clamp(min=0)] * flip, x * flip, box).sum() == 0


def test_mirroring_inverted_centres_restores_their_handedness_and_keeps_their_bonds(sps_system, snapshot):
    """Against the opposite handedness, every reference centre is inverted: each is reflected with its
    hydrogen through the plane of its heavy neighbours, which keeps its distances to all four, and
    then has the opposite sign; a frame with no inverted centre is left as it is. A centre put into
    its neighbours' plane is lifted off it to `MIN_VOLUME`, its bonds barely longer."""
    topology, _, plan = sps_system
    frame, _ = snapshot
    x, box = torch.as_tensor(frame.positions), torch.as_tensor(frame.box)
    atoms, signs, hydrogens = system_stereo(topology, learn_stereo(topology, [(x, box)]))
    assert (topology.elements[hydrogens] == "H").all()
    kept = x.clone()
    assert len(StereoCheck(plan, atoms, signs, hydrogens).mirror_inverted(kept, box)) == 0
    assert torch.equal(kept, x)
    mirrored = x.clone()
    done = StereoCheck(plan, atoms, -signs, hydrogens).mirror_inverted(mirrored, box)
    assert np.array_equal(done, atoms)
    assert handedness(mirrored, box, atoms[:, 0], atoms[:, 1:]).tolist() == (-signs).tolist()

    def distances(y: torch.Tensor) -> torch.Tensor:
        ends = np.column_stack([atoms[:, 1:], hydrogens])
        return minimum_image(y[ends] - y[atoms[:, :1]], box).norm(dim=-1)

    torch.testing.assert_close(distances(mirrored), distances(x))
    flat = x.clone()  # the first centre put into the plane of its heavy neighbours
    a, b, d = minimum_image(flat[atoms[0, 1:]] - flat[atoms[0, 0]], box)
    normal = torch.linalg.cross(b - a, d - a)
    normal /= normal.norm()
    flat[atoms[0, 0]] += (a @ normal) * normal
    lifted = flat.clone()
    check = StereoCheck(plan, atoms, signs, hydrogens)
    assert np.array_equal(check.mirror_inverted(lifted, box), atoms[:1])
    a, b, d = minimum_image(lifted[atoms[0, 1:]] - lifted[atoms[0, 0]], box)
    volume = signed_volume(a, b, d) * signs[0]
    assert MIN_VOLUME <= volume < MIN_VOLUME + 1e-6
    assert (distances(lifted)[0, :3] - distances(flat)[0, :3]).abs().max() < 0.003


def test_tiny_training_writes_reloads_and_continues(tmp_path):
    config = read_config(write_config(tmp_path, steps=2))
    config.output, config.workdir = str(tmp_path / "model.pt"), str(tmp_path / "run")
    train(config, progress=False)
    model = load_model(tmp_path / "model.pt")
    assert model.molecules["PS1"]["n_atoms"] == 162 and model.layout.atom_types == ("C", "C_AR", "H", "H_AR")
    data = torch.load(tmp_path / "model.pt", weights_only=True)
    assert data["training"]["steps"] == 2 and data["network"]["width"] == 4
    assert model.stereo["PS1"]["signs"] == [1, -1] * 4 + [1]  # learned from the training frame
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for name, weights in data["generator"].items():  # the model file holds the averaged weights
        torch.testing.assert_close(weights, state["generator_average"][name], rtol=0, atol=0)
    assert any(not torch.equal(state["generator"][k], v) for k, v in data["generator"].items())
    config.steps = 3
    train(config, progress=False, overwrite=True)
    log = read_log(tmp_path / "run" / "log.csv")
    assert [row["step"] for row in log] == ["1", "2", "3"]
    assert float(log[-1]["lambda_phi"]) > 0  # the energy prior is on, and its gradients are finite
    logged = ("critic_loss", "generator_loss", "prior", "density_mass", "position_error")
    assert all(math.isfinite(float(row[k])) for row in log for k in logged)
    assert float(log[-1]["density_mass"]) > 0 and 0 < float(log[-1]["position_error"]) < 1.0
    continued = torch.load(tmp_path / "model.pt", weights_only=True)["generator"]
    assert any(not torch.equal(continued[k], v) for k, v in data["generator"].items())
    config.steps, config.output = 1, str(tmp_path / "of-the-checkpoint.pt")  # below the checkpoint's step
    train(config, progress=False)
    assert len(read_log(tmp_path / "run" / "log.csv")) == 3  # nothing trained
    written = torch.load(config.output, weights_only=True)
    assert written["training"]["steps"] == 3
    assert all(torch.equal(written["generator"][k], v) for k, v in continued.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_run_begun_on_cpu_resumes_on_cuda(tmp_path):
    config = read_config(write_config(tmp_path, steps=1))
    config.output, config.workdir = str(tmp_path / "model.pt"), str(tmp_path / "run")
    train(config, progress=False)
    config.steps, config.device = 3, "cuda"
    train(config, progress=False, overwrite=True)
    log = read_log(tmp_path / "run" / "log.csv")
    assert [row["step"] for row in log] == ["1", "2", "3"]
    assert all(math.isfinite(float(row[k])) for row in log for k in ("critic_loss", "generator_loss", "prior"))
    assert load_model(tmp_path / "model.pt").network.width == 4


def test_energy_score_prior_draws_twice_and_logs_the_spread(tmp_path):
    """prior_score = "energy": two generator draws per item; their energy difference is logged and
    the losses stay finite. An unknown score is refused by name. The model file records the
    training frames' temperature, which must be positive."""
    path = write_config(tmp_path, steps=2)
    path.write_text(path.read_text().replace("seed = 3", 'seed = 3\nprior_score = "energy"\ntemperature = 568'))
    config = read_config(path)
    config.output, config.workdir = str(tmp_path / "model.pt"), str(tmp_path / "run")
    train(config, progress=False)
    log = read_log(tmp_path / "run" / "log.csv")
    assert all(math.isfinite(float(row[k])) for row in log for k in ("generator_loss", "prior", "prior_spread"))
    assert float(log[-1]["prior_spread"]) > 0
    assert load_model(tmp_path / "model.pt").training["temperature"] == 568
    path.write_text(path.read_text().replace('"energy"', '"l2"'))
    with pytest.raises(InputError, match=r"prior_score 'l2': expected one of l1, energy") as error:
        read_config(path)
    assert error.value.path == str(path)  # the file is named
    with pytest.raises(InputError, match=r"prior_score 'l2'"):
        TrainConfig(prior_score="l2")
    with pytest.raises(InputError, match=r"temperature -5: expected a positive number of kelvin"):
        TrainConfig(temperature=-5)


def test_non_finite_loss_stops_training_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 7: critic_loss not finite; .*ck.pt .* is kept"):
        _check_finite({"critic_loss": math.nan, "generator_loss": 1.0}, 7, tmp_path / "ck.pt")


def test_log_of_a_resumed_run_takes_new_columns(tmp_path):
    """A run resumed by a version that logs more keeps one header: old rows get empty cells."""
    path = tmp_path / "log.csv"
    TrainingLog(path).write(1, {"critic_loss": 1.0})
    TrainingLog(path).write(2, {"critic_loss": 2.0, "density_mass": 3.0})
    rows = read_log(path)
    assert [(r["step"], r["critic_loss"], r["density_mass"]) for r in rows] == [("1", "1.0", ""), ("2", "2.0", "3.0")]


def test_resume_continues_exactly(tmp_path):
    straight = read_config(write_config(tmp_path, steps=3))
    straight.workdir, straight.output = str(tmp_path / "a"), str(tmp_path / "a.pt")
    train(straight, progress=False)
    interrupted = read_config(write_config(tmp_path, steps=1))
    interrupted.workdir, interrupted.output = str(tmp_path / "b"), str(tmp_path / "b.pt")
    train(interrupted, progress=False)
    interrupted.steps = 3
    train(interrupted, progress=False)
    drop = {"time"}
    rows_a = [{k: v for k, v in r.items() if k not in drop} for r in read_log(tmp_path / "a" / "log.csv")]
    rows_b = [{k: v for k, v in r.items() if k not in drop} for r in read_log(tmp_path / "b" / "log.csv")]
    assert rows_a == rows_b
    average_a, average_b = (
        torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["generator_average"] for run in ("a", "b")
    )
    assert all(torch.equal(average_a[k], average_b[k]) for k in average_a)


def torchrun(config: Path, workdir: Path, output: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "gmx_deepbackmap.cli",
            "train",
            "--config",
            str(config),
            "--workdir",
            str(workdir),
            "-o",
            str(output),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_torchrun_two_processes_sigterm_and_resume(tmp_path):
    config = write_config(tmp_path, steps=6)
    run = torchrun(config, tmp_path / "run", tmp_path / "model.pt")
    log = tmp_path / "run" / "log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and not (log.is_file() and len(read_log(log)) >= 2):
        time.sleep(0.5)
    assert run.poll() is None, run.stdout.read()
    run.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    out, _ = run.communicate(timeout=300)
    assert "Stopped by SIGTERM" in out, out
    stopped_at = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= stopped_at < 6 and not (tmp_path / "model.pt").exists()
    run = torchrun(config, tmp_path / "run", tmp_path / "model.pt")
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 6
    assert load_model(tmp_path / "model.pt").training["steps"] == 6
