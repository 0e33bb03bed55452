"""Force-field energies of batch items' local neighbourhoods: the training prior and the
sampler's ranking of orientations (method.md sections 2 and 5).

An item's atoms are its environment atoms and its sequence, in the local frame (no periodic
images needed). Its energy holds every bonded term (each form of `forms.FORMS` the topology has)
that involves a sequence atom and whose atoms are all present, and the Lennard-Jones energy of the
sequence atoms with all present atoms they do not exclude, with the cut-off and modifier of the
`NonbondedSettings`. The functional forms are the shared ones of `forms` and `energies`.
"""

from __future__ import annotations

import numpy as np
import torch

from .energies import bonded_row_energies, lj_row_energies
from .environment import Batch, SystemPlan
from .forms import FORMS
from .mdp import NonbondedSettings
from .topology import Topology

# nm: pairs closer than this count as this close. Keeps the prior finite (and its gradient useful)
# when an untrained generator stacks atoms; real structures have no pair this close.
MIN_DISTANCE = 0.1


class LocalPrior:
    """Per-item energies of batches, built once per system."""

    def __init__(self, topology: Topology, plan: SystemPlan, settings: NonbondedSettings | None = None):
        settings = settings or NonbondedSettings()
        self.plan = plan
        self.n_atoms = topology.n_atoms
        self.cutoff, self.lj_shift = settings.cutoff, settings.lj_modifier == "potential-shift"
        self.masses = torch.as_tensor(topology.masses)
        self.c6 = torch.as_tensor(topology.c6)
        self.c12 = torch.as_tensor(topology.c12)
        self.type_index = torch.as_tensor(topology.type_index)
        self.terms = {}
        for name, terms in topology.bonded.items():
            if not len(terms):
                continue  # the forms the topology has: the prior's terms
            self.terms[name] = (
                torch.as_tensor(terms.indices),
                torch.as_tensor(terms.params),
                terms_of_steps(plan, terms.indices),
            )
        self.excluded = {name: torch.as_tensor(_excluded_matrix(topology, name)) for name in plan.plans}

    def energies(self, batch: Batch, sequence: torch.Tensor, internal: bool = True) -> dict[str, torch.Tensor]:
        """Energies (B,) per prior term with the sequence at local positions `sequence` (B, L, 3).
        `internal=False` leaves out the bonded terms whose atoms all belong to the sequence (the
        generated shape's own strain), keeping those that join it to its environment."""
        x = self._coordinates(batch, sequence)
        return {**self._bonded(batch, x, internal), "lj": self._lj_pairs(batch, x).sum((1, 2))}

    def total_and_strain(self, batch: Batch, sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,) energy summed over the prior terms (as `energies`), (B,) the highest Lennard-Jones
        energy of any one pair of a sequence atom and (B,) the highest energy of any one angle or
        dihedral term (kJ/mol; bonds are left out: the sampler restores them): a single strained
        contact or bent joint the sum hides."""
        x = self._coordinates(batch, sequence)
        pairs = self._lj_pairs(batch, x)
        rows = self._bonded_rows(batch, x)
        bent = torch.stack([rows[name].amax(-1) for name in rows if FORMS[name].section != "bonds"]).amax(0)
        return sum(e.sum(-1) for e in rows.values()) + pairs.sum((1, 2)), pairs.amax((1, 2)), bent

    def _bonded(self, batch: Batch, x: torch.Tensor, internal: bool = True) -> dict[str, torch.Tensor]:
        return {name: e.sum(-1) for name, e in self._bonded_rows(batch, x, internal).items()}

    def _bonded_rows(self, batch: Batch, x: torch.Tensor, internal: bool = True) -> dict[str, torch.Tensor]:
        """Energy (B, T) of each bonded term row a step touches, 0 where absent (see `energies`)."""
        lookup = self._positions(batch)
        out = {}
        for name, (_, params, _) in self.terms.items():
            rows, where, valid = self._term_slots(name, batch, lookup)
            if not internal:
                valid = valid & ~(where >= batch.env_atoms.shape[1]).all(-1)
            energy = bonded_row_energies(name, x, where.clamp(min=0), params[rows.clamp(min=0)].to(x))
            out[name] = torch.where(valid, energy, torch.zeros((), dtype=x.dtype))
        return out

    def centre_of_mass(self, batch: Batch, sequence: torch.Tensor) -> torch.Tensor:
        """Mass-weighted centre (B, 3) of each item's sequence atoms at `sequence` (B, L, 3)."""
        m = self.masses[batch.sequence_atoms.clamp(min=0)].to(sequence) * batch.step_mask.to(sequence)
        return (m[..., None] * sequence).sum(1) / m.sum(1, keepdim=True)

    def junction_shift(self, batch: Batch, sequence: torch.Tensor) -> torch.Tensor:
        """Translation (B, 3) that brings each item's bonds between its sequence and its present
        environment to b0 on average (zero where there are none).

        The sampler moves each candidate by it before ranking: the generated shape is kept, and
        the joint to the atoms already in place comes out at its bond length.
        """
        x = self._coordinates(batch, sequence)
        lookup = self._positions(batch)
        pull, joints = torch.zeros(len(x), 3, dtype=x.dtype), torch.zeros(len(x), 1, dtype=x.dtype)
        for name in (n for n in self.terms if FORMS[n].section == "bonds"):
            rows, where, valid = self._term_slots(name, batch, lookup)
            inside = where >= batch.env_atoms.shape[1]
            joint = valid & (inside[..., 0] != inside[..., 1])
            ends = x[torch.arange(len(x))[:, None, None], where.clamp(min=0)]  # (B, T, 2, 3)
            sign = torch.where(inside[..., 0], 1.0, -1.0)[..., None].to(x)
            d = (ends[..., 0, :] - ends[..., 1, :]) * sign  # environment -> sequence
            r = d.norm(dim=-1, keepdim=True).clamp(min=1e-9)
            b0 = self.terms[name][1][rows.clamp(min=0), 0].to(x)[..., None]
            pull += ((b0 - r) * d / r * joint[..., None]).sum(1)
            joints += joint.sum(1, keepdim=True)
        return pull / joints.clamp(min=1)

    def _coordinates(self, batch: Batch, sequence: torch.Tensor) -> torch.Tensor:
        """(B, A + L, 3) local positions of each item's environment atoms, then its sequence."""
        return torch.cat([batch.particles[:, : batch.env_atoms.shape[1]].to(sequence), sequence], dim=1)

    def _term_slots(self, name: str, batch: Batch, lookup: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows (B, T) of term `name` that each item's step touches (-1 padded), the slots
        (B, T, k) of their atoms in `_coordinates` (-1 absent), and which rows are complete."""
        indices, _, of_step = self.terms[name]
        rows = of_step[batch.steps]
        atoms = indices[rows.clamp(min=0)]
        where = torch.gather(lookup, 1, atoms.flatten(1)).view(atoms.shape)
        return rows, where, (rows >= 0) & (where >= 0).all(-1)

    def _positions(self, batch: Batch) -> torch.Tensor:
        """(B, N) index of each system atom in the item's [environment | sequence] array, -1 absent."""
        b, a = batch.env_atoms.shape
        lookup = torch.full((b, self.n_atoms), -1, dtype=torch.int64)
        ids = torch.cat([batch.env_atoms, batch.sequence_atoms], 1)
        slots = torch.arange(ids.shape[1]).expand(b, -1)
        present = ids >= 0
        lookup[torch.nonzero(present, as_tuple=True)[0], ids[present]] = slots[present]
        return lookup

    def _lj_pairs(self, batch: Batch, x: torch.Tensor) -> torch.Tensor:
        """(B, L, A + L) energy of each sequence atom with each environment and sequence atom, 0 where no pair."""
        seq, env = batch.sequence_atoms, torch.cat([batch.env_atoms, batch.sequence_atoms], 1)
        n_env = batch.env_atoms.shape[1]
        s, e = seq.clamp(min=0), env.clamp(min=0)
        pair = (seq[:, :, None] >= 0) & (env[:, None, :] >= 0)
        # sequence-sequence pairs once (k < l), never an atom with itself
        later = torch.arange(env.shape[1])[None, :] < n_env + torch.arange(seq.shape[1])[:, None]
        pair &= later[None]
        pair &= ~self._excluded_pairs(s, e)
        d = x[:, None, :, :] - x[:, n_env:, None, :]
        r2 = torch.where(pair, d.square().sum(-1).clamp(min=MIN_DISTANCE**2), torch.ones((), dtype=x.dtype))
        ti, tj = self.type_index[s][:, :, None], self.type_index[e][:, None, :]
        energy = lj_row_energies(r2, self.c6[ti, tj].to(x), self.c12[ti, tj].to(x), self.cutoff, self.lj_shift)
        return torch.where(pair, energy, torch.zeros((), dtype=x.dtype))

    def _excluded_pairs(self, seq: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        molecule = torch.as_tensor(plan.atom_molecule)
        local = torch.as_tensor(plan.atom_local)
        same = molecule[seq][:, :, None] == molecule[env][:, None, :]
        out = torch.zeros(same.shape, dtype=torch.bool)
        kinds = torch.as_tensor(plan.molecule_type)[molecule[seq]]
        for t, name in enumerate(plan.molecule_type_names):
            sel = same & (kinds == t)[:, :, None]
            if sel.any():
                li = local[seq][:, :, None].expand_as(sel)[sel]
                lj = local[env][:, None, :].expand_as(sel)[sel]
                out[sel] = self.excluded[name][li, lj]
        return out


def terms_of_steps(plan: SystemPlan, indices: np.ndarray) -> torch.Tensor:
    """(S, T) rows of the terms that involve an atom of each step, -1 padded."""
    step_of_atom = np.full(plan.n_atoms, -1, dtype=np.int64)
    for s, atoms in enumerate(plan.step_atoms):
        step_of_atom[atoms[atoms >= 0]] = s
    lists: list[set[int]] = [set() for _ in range(len(plan.step_atoms))]
    for row, atoms in enumerate(indices):
        for s in set(step_of_atom[atoms].tolist()) - {-1}:
            lists[s].add(row)
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), -1, dtype=np.int64)
    for s, rows in enumerate(lists):
        out[s, : len(rows)] = sorted(rows)
    return torch.from_numpy(out)


def _excluded_matrix(topology: Topology, name: str) -> np.ndarray:
    mtype = topology.molecule_types[name]
    excluded = np.eye(mtype.n_atoms, dtype=bool)
    excluded[mtype.exclusions[:, 0], mtype.exclusions[:, 1]] = True
    excluded[mtype.exclusions[:, 1], mtype.exclusions[:, 0]] = True
    return excluded
