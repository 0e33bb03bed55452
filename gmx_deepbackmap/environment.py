"""Local environments: what the networks see when one bead's atoms are placed.

`SystemPlan` joins topology, mapping and the per-molecule reconstruction plans into flat per-atom
and per-bead lookup arrays of the whole system. `gather` turns a batch of items (one bead's atom
sequence, in a forward or Gibbs context, under a rotation about the frame axis) into padded
tensors in the bead's local frame: environment particles with their channel for every step of the
sequence, the reference positions of the sequence, and the atoms each item contains (for the
energy prior). Everything is batched torch; only the plan is built in NumPy, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .mapping import Mapping
from .pbc import box_widths, image_shifts, minimum_image, neighbour_pairs
from .reconstruction import (
    HEAVY,
    LJ,
    FeatureLayout,
    MoleculePlan,
    bead_steps,
    reconstruction_order,
    relation_matrix,
)
from .topology import Topology

FORWARD, GIBBS = 0, 1
TERM_NAMES = ("bonds", "angles", "propers", "impropers")


@dataclass(frozen=True)
class SystemPlan:
    """Flat lookups over a whole system (N atoms, M beads, S steps), built once per system."""

    layout: FeatureLayout
    plans: dict[str, MoleculePlan]
    atom_type: np.ndarray  # (N,) force-field type index
    atom_molecule: np.ndarray  # (N,)
    atom_local: np.ndarray  # (N,) index inside its molecule
    atom_heavy: np.ndarray  # (N,) bool
    atom_owner: np.ndarray  # (N,) bead reconstructing the atom
    atom_rank: np.ndarray  # (N,) rank of that bead in its molecule's bead order
    molecule_type: np.ndarray  # (n_molecules,) index into `molecule_type_names`
    molecule_type_names: tuple[str, ...]
    bead_type: np.ndarray  # (M,) bead-type index
    bead_reference: np.ndarray  # (M,) bead orienting the local frame
    bead_molecule: np.ndarray  # (M,)
    bead_bonds: np.ndarray  # (n, 2) CG bonds between beads
    bead_rank: np.ndarray  # (M,)
    step_bead: np.ndarray  # (S,) bead of each step
    step_heavy: np.ndarray  # (S,) bool: heavy-atom phase
    step_atoms: np.ndarray  # (S, L) atoms placed, in order, -1 padded
    step_length: np.ndarray  # (S,)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_type)

    def relation_between(self, placed: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Relation codes of atoms `others` to atoms `placed` (broadcast); LJ across molecules."""
        same = self.atom_molecule[placed] == self.atom_molecule[others]
        code = np.full(np.broadcast(placed, others).shape, LJ, dtype=np.int64)
        for t, name in enumerate(self.molecule_type_names):
            sel = same & (self.molecule_type[self.atom_molecule[placed]] == t)
            if sel.any():
                p, o = np.broadcast_arrays(placed, others)
                code[sel] = self.plans[name].relation[self.atom_local[p[sel]], self.atom_local[o[sel]]]
        return code


def molecule_plan(topology: Topology, mapping: Mapping, name: str) -> MoleculePlan:
    """The reconstruction plan of one molecule type (its first instance supplies the terms)."""
    mtype, mmap = topology.molecule_types[name], mapping.molecule_types[name]
    first = next(start for mol, start in topology.molecules if mol == name)
    terms = {t: _local_rows(getattr(topology, t).indices, first, mtype.n_atoms) for t in TERM_NAMES}
    heavy = topology.elements[first : first + mtype.n_atoms] != "H"
    order = reconstruction_order(mmap.bead_bonds, 0, mmap.n_beads)
    rank = np.empty(mmap.n_beads, dtype=np.int64)
    rank[list(order)] = np.arange(mmap.n_beads)
    return MoleculePlan(
        name=name,
        bead_order=order,
        bead_rank=rank,
        frame_reference=np.array([b.frame_reference for b in mmap.beads]),
        steps=bead_steps(order, [list(b.owned) for b in mmap.beads], heavy, mtype.bonds),
        relation=relation_matrix(mtype.n_atoms, terms, mtype.exclusions),
        owner=np.asarray(mmap.atom_owner),
        heavy=heavy,
    )


def _local_rows(indices: np.ndarray, first: int, n: int) -> np.ndarray:
    inside = ((indices >= first) & (indices < first + n)).all(axis=1)
    return indices[inside] - first


def plan_system(topology: Topology, mapping: Mapping, layout: FeatureLayout | None = None) -> SystemPlan:
    """Join topology and mapping into the lookups that environments are built from."""
    names = tuple(dict.fromkeys(name for name, _ in topology.molecules))
    plans = {name: molecule_plan(topology, mapping, name) for name in names}
    if layout is None:
        layout = FeatureLayout(tuple(topology.type_names), tuple(dict.fromkeys(mapping.bead_types.tolist())))
    bead_type_of = {t: i for i, t in enumerate(layout.bead_types)}
    atom_type_of = {t: i for i, t in enumerate(layout.atom_types)}
    bead_first = np.r_[0, np.cumsum([mapping.molecule_types[n].n_beads for n, _ in topology.molecules])]
    atom_local = np.arange(topology.n_atoms) - np.array([s for _, s in topology.molecules])[topology.molecule_index]
    bead_rank = np.concatenate([plans[n].bead_rank for n, _ in topology.molecules])
    steps = [
        (bead_first[m] + s.bead, s.phase == HEAVY, np.asarray(s.atoms) + start)
        for m, (name, start) in enumerate(topology.molecules)
        for s in plans[name].steps
    ]
    longest = max(len(a) for _, _, a in steps)
    step_atoms = np.full((len(steps), longest), -1, dtype=np.int64)
    for i, (_, _, atoms) in enumerate(steps):
        step_atoms[i, : len(atoms)] = atoms
    return SystemPlan(
        layout=layout,
        plans=plans,
        atom_type=np.array([atom_type_of[t] for t in topology.atom_types]),
        atom_molecule=topology.molecule_index,
        atom_local=atom_local,
        atom_heavy=topology.elements != "H",
        atom_owner=mapping.atom_owner,
        atom_rank=bead_rank[mapping.atom_owner],
        molecule_type=np.array([names.index(n) for n, _ in topology.molecules]),
        molecule_type_names=names,
        bead_type=np.array([bead_type_of[t] for t in mapping.bead_types]),
        bead_reference=mapping.frame_reference,
        bead_molecule=mapping.bead_molecule,
        bead_bonds=mapping.bead_bonds,
        bead_rank=bead_rank,
        step_bead=np.array([b for b, _, _ in steps]),
        step_heavy=np.array([h for _, h, _ in steps]),
        step_atoms=step_atoms,
        step_length=np.array([len(a) for _, _, a in steps]),
    )


# --------------------------------------------------------------------------- per CG frame


@dataclass(frozen=True)
class Neighbourhood:
    """Candidate environment atoms and beads of every bead of one CG frame (CG positions only).

    Shifts are the lattice vectors that bring each candidate's owner bead to its image nearest
    the bead; with atoms kept near their owner beads (`near_owners`), `x + shift - centre` is
    the atom's displacement in the bead's frame without a per-atom image search.
    """

    beads: torch.Tensor  # (M, Kb) neighbouring beads incl. the bead itself, -1 padded
    bead_shifts: torch.Tensor  # (M, Kb, 3) nm
    atoms: torch.Tensor  # (M, Ka) atoms owned by those beads, -1 padded
    atom_shifts: torch.Tensor  # (M, Ka, 3) nm


def graph_colours(neighbours: torch.Tensor | np.ndarray, members: np.ndarray) -> np.ndarray:
    """Colours of `members` such that no two of them that are neighbours (rows of `neighbours`,
    -1 padded) share one: greedy, largest degree first. Beads of one colour never see each
    other's atoms, so they are conditionally independent given the rest (chromatic Gibbs); the
    sampler's hydrogens of one colour are moved together (`thermal`)."""
    member = np.zeros(len(neighbours), dtype=bool)
    member[members] = True
    rows = np.asarray(neighbours)[members]
    rows = np.where((rows >= 0) & member[rows.clip(min=0)], rows, -1)
    colour = np.full(len(member), -1, dtype=np.int64)
    for k in np.argsort(-(rows >= 0).sum(1), kind="stable"):
        taken = colour[rows[k][rows[k] >= 0]]
        free = np.ones(len(members) + 1, dtype=bool)
        free[taken[taken >= 0]] = False
        colour[members[k]] = int(np.argmax(free))
    return colour[members]


def neighbourhood(plan: SystemPlan, cg: np.ndarray, box: np.ndarray, reach: float) -> Neighbourhood:
    """Beads within `reach` nm of each bead, the atoms they own, and their periodic shifts."""
    pairs = _bead_pairs(cg, box, reach)
    n = len(cg)
    lists: list[list[int]] = [[i] for i in range(n)]
    for i, j in pairs:
        lists[i].append(int(j))
        lists[j].append(int(i))
    owned: list[list[int]] = [[] for _ in range(n)]
    for atom, bead in enumerate(plan.atom_owner):
        owned[bead].append(atom)
    beads = _pad(lists)
    atoms = _pad([np.concatenate([owned[b] for b in row]) for row in lists])
    x = torch.as_tensor(cg, dtype=torch.float64)
    b = torch.as_tensor(box, dtype=torch.float64)
    bead_shifts = image_shifts(x[beads.clamp(min=0)] - x[:, None, :], b)
    owner = torch.from_numpy(plan.atom_owner)[atoms.clamp(min=0)]
    atom_shifts = torch.take_along_dim(bead_shifts, _column_of(beads, owner)[..., None], dim=1)
    return Neighbourhood(beads, bead_shifts, atoms, atom_shifts)


def _column_of(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each entry of `values` (M, K), its column in the same row of `rows` (M, Kb)."""
    table = torch.zeros(rows.shape[0], int(rows.max()) + 1, dtype=torch.int64)
    r, c = torch.nonzero(rows >= 0, as_tuple=True)
    table[r, rows[r, c]] = c
    return torch.gather(table, 1, values)


def near_owners(plan: SystemPlan, positions: np.ndarray, cg: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Atom positions moved to the periodic image nearest their owner bead."""
    x = torch.as_tensor(positions, dtype=torch.float64)
    owner = torch.as_tensor(cg, dtype=torch.float64)[plan.atom_owner]
    return (owner + minimum_image(x - owner, torch.as_tensor(box, dtype=torch.float64))).numpy()


def _bead_pairs(cg: np.ndarray, box: np.ndarray, reach: float) -> np.ndarray:
    """Bead pairs i < j within `reach`; a dense search where the grid search refuses small boxes."""
    b = torch.as_tensor(box, dtype=torch.float64)
    if reach < float(box_widths(b).min()) / 2:
        return neighbour_pairs(cg, box, reach)[0]
    x = torch.as_tensor(cg, dtype=torch.float64)
    i, j = torch.triu_indices(len(x), len(x), 1)
    close = minimum_image(x[j] - x[i], b).norm(dim=-1) < reach
    return torch.stack([i[close], j[close]], 1).numpy()


def _pad(rows) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Inputs of the networks for B items of up to L steps, in the items' local frames (nm)."""

    steps: torch.Tensor  # (B,) index into the plan's steps
    particles: torch.Tensor  # (B, P, 3) environment atoms, then beads
    channels: torch.Tensor  # (B, L, P) channel of each particle as seen by step l, -1 absent
    sequence_channels: torch.Tensor  # (B, L, L) channel of sequence atom k seen by step l (k < l)
    atom_types: torch.Tensor  # (B, L) type index of the atom placed at each step
    step_mask: torch.Tensor  # (B, L) bool
    target: torch.Tensor  # (B, L, 3) current positions of the sequence (the reference in training)
    env_atoms: torch.Tensor  # (B, A) system index of the environment atoms (first A particles), -1 pad
    sequence_atoms: torch.Tensor  # (B, L) system index of the sequence atoms, -1 pad
    centre: torch.Tensor  # (B, 3) bead position, box frame
    rotation: torch.Tensor  # (B, 3, 3) rows: local axes in the box frame

    def to_box_frame(self, local: torch.Tensor) -> torch.Tensor:
        """Local coordinates (B, ..., 3) back to box coordinates."""
        shape = local.shape
        flat = local.reshape(shape[0], -1, 3) @ self.rotation
        return (flat + self.centre[:, None, :]).reshape(shape)


def local_frames(
    cg: torch.Tensor, box: torch.Tensor, beads: torch.Tensor, reference: torch.Tensor, angle: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and rotation of each bead's frame: z from its reference bead to it, then a turn about z.

    A bead with no reference (-1, `-` in the mapping: a molecule of one bead) takes the box's z
    axis, so its frame is defined by the turn `angle` alone."""
    centre = cg[beads]
    has_reference = (reference >= 0)[:, None]
    z = minimum_image(centre - cg[reference.clamp(min=0)], box)
    z = torch.where(has_reference, z, torch.tensor([0, 0, 1.0]).to(z))
    z = z / z.norm(dim=-1, keepdim=True)
    helper = torch.where((z[:, :1].abs() < 0.9), torch.tensor([1.0, 0, 0]).to(z), torch.tensor([0, 1.0, 0]).to(z))
    x = helper - (helper * z).sum(-1, keepdim=True) * z
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    x, y = c * x + s * y, c * y - s * x
    return centre, torch.stack([x, y, z], dim=1)


def gather(
    plan: SystemPlan,
    hood: Neighbourhood,
    positions: torch.Tensor,
    cg: torch.Tensor,
    box: torch.Tensor,
    steps: torch.Tensor,
    context: torch.Tensor,
    angle: torch.Tensor,
    half_extent: float,
    score_hidden: bool = False,
) -> Batch:
    """Environments of `steps` (B,) in `context` (FORWARD/GIBBS, (B,)), turned by `angle` (B,).

    Particles whose local coordinates lie outside the cube of half edge `half_extent` are
    dropped; `positions` (N, 3) are the current atom positions (reference in training).
    `score_hidden`: the hydrogens a Gibbs heavy-phase item hides from the network (its molecule's,
    other beads') are still environment atoms, with no channel: the energy of the item sees them.
    """
    steps_np = steps.numpy()
    beads = torch.from_numpy(plan.step_bead[steps_np])
    centre, rotation = local_frames(cg, box, beads, torch.from_numpy(plan.bead_reference[beads.numpy()]), angle)
    seq = torch.from_numpy(plan.step_atoms[steps_np])  # (B, L)
    step_mask = seq >= 0

    cand = hood.atoms[beads]  # (B, C)
    heavy_phase = torch.from_numpy(plan.step_heavy[steps_np])
    visible = _visible(plan, cand, beads, heavy_phase, context)
    if score_hidden:
        visible |= _hidden_hydrogens(plan, cand, beads, heavy_phase, context)
    env, env_local, env_keep = _inside(positions, cand, hood.atom_shifts[beads], visible, centre, rotation, half_extent)
    env_drawn = env_keep & ~_hidden_hydrogens(plan, env, beads, heavy_phase, context) if score_hidden else env_keep
    bead_cand = hood.beads[beads]
    bead_ids, bead_local, bead_keep = _inside(
        cg, bead_cand, hood.bead_shifts[beads], bead_cand >= 0, centre, rotation, half_extent
    )

    seq_np, env_np = seq.numpy(), env.numpy()
    safe_seq = np.where(seq_np >= 0, seq_np, 0)
    types = plan.atom_type
    env_rel = plan.relation_between(safe_seq[:, :, None], np.where(env_np >= 0, env_np, 0)[:, None, :])
    env_channels = plan.layout.atom_channel(env_rel, types[np.where(env_np >= 0, env_np, 0)][:, None, :])
    env_channels = np.where(env_drawn.numpy()[:, None, :] & (seq_np[:, :, None] >= 0), env_channels, -1)
    bead_channels = plan.layout.bead_channel(plan.bead_type[np.where(bead_ids.numpy() >= 0, bead_ids.numpy(), 0)])
    bead_channels = np.where(bead_keep.numpy(), bead_channels, -1)[:, None, :].repeat(seq.shape[1], 1)
    seq_rel = plan.relation_between(safe_seq[:, :, None], safe_seq[:, None, :])
    earlier = (
        np.tril(np.ones((seq.shape[1],) * 2, dtype=bool), k=-1)[None]
        & (seq_np[:, None, :] >= 0)
        & (seq_np[:, :, None] >= 0)
    )
    seq_channels = np.where(earlier, plan.layout.atom_channel(seq_rel, types[safe_seq][:, None, :]), -1)

    seq_local = (positions[seq.clamp(min=0)] - centre[:, None, :]) @ rotation.transpose(1, 2)
    return Batch(
        steps=steps,
        particles=torch.cat([env_local, bead_local], dim=1),
        channels=torch.from_numpy(np.concatenate([env_channels, bead_channels], axis=2)),
        sequence_channels=torch.from_numpy(seq_channels),
        atom_types=torch.from_numpy(types[safe_seq]),
        step_mask=step_mask,
        target=seq_local,
        env_atoms=env,
        sequence_atoms=seq,
        centre=centre,
        rotation=rotation,
    )


def _visible(
    plan: SystemPlan, cand: torch.Tensor, beads: torch.Tensor, heavy_phase: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Which candidate atoms exist for the item (method.md section 2, see module docstring).

    Forward, heavy phase: heavy atoms of beads ranked earlier (in any molecule). Forward,
    hydrogen phase: all heavy atoms and the hydrogens of earlier-ranked beads. Gibbs: every atom
    except the sequence itself; in the heavy phase also without the hydrogens of the molecule.
    """
    safe = cand.clamp(min=0)
    heavy = torch.from_numpy(plan.atom_heavy)[safe]
    earlier = torch.from_numpy(plan.atom_rank)[safe] < torch.from_numpy(plan.bead_rank)[beads][:, None]
    own = torch.from_numpy(plan.atom_owner)[safe] == beads[:, None]
    same_molecule = torch.from_numpy(plan.atom_molecule)[safe] == torch.from_numpy(plan.bead_molecule)[beads][:, None]
    hp = heavy_phase[:, None]
    forward = torch.where(hp, heavy & earlier, heavy | earlier)
    sequence = own & (heavy == hp)
    gibbs = ~sequence & ~(hp & ~heavy & same_molecule)
    return (cand >= 0) & torch.where((context == FORWARD)[:, None], forward, gibbs)


def _hidden_hydrogens(
    plan: SystemPlan, atoms: torch.Tensor, beads: torch.Tensor, heavy_phase: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Which of `atoms` (B, C) are hydrogens a Gibbs heavy-phase item hides though they stay in
    place: those of its molecule's other beads (its own are re-placed after it)."""
    safe = atoms.clamp(min=0)
    hydrogen = ~torch.from_numpy(plan.atom_heavy)[safe]
    own = torch.from_numpy(plan.atom_owner)[safe] == beads[:, None]
    same_molecule = torch.from_numpy(plan.atom_molecule)[safe] == torch.from_numpy(plan.bead_molecule)[beads][:, None]
    gibbs_heavy = ((context == GIBBS) & heavy_phase)[:, None]
    return (atoms >= 0) & gibbs_heavy & hydrogen & same_molecule & ~own


def _inside(x, cand, shifts, valid, centre, rotation, half_extent):
    """Keep the candidates inside the cube, packed to the front in their order; returns ids, local
    coords, mask."""
    local = (x[cand.clamp(min=0)] + shifts - centre[:, None, :]) @ rotation.transpose(1, 2)
    keep = valid & (local.abs() < half_extent).all(-1)
    row, col = keep.nonzero(as_tuple=True)
    count = keep.sum(1)
    slot = torch.arange(len(row)) - (count.cumsum(0) - count)[row]
    width = int(count.max()) if len(keep) else 0
    ids = torch.full((len(keep), width), -1, dtype=cand.dtype)
    ids[row, slot] = cand[row, col]
    packed = local.new_zeros(len(keep), width, 3)
    packed[row, slot] = local[row, col]
    return ids, packed, ids >= 0
