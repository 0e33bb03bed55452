"""Which steps are placed together, and in what order: the batches of the forward pass, of a Gibbs
sweep, of a repair round and of the re-placement around mirrored chiral centres.

In a Gibbs sweep, beads whose neighbourhoods overlap are never re-placed in the same batch: the
beads are coloured so that no two neighbours share a colour, and one colour is one batch
(chromatic Gibbs). Repair rounds re-place the beads with a strained step and, in the first
rounds, the steps whose energy is an outlier among the copies of the same step in other
molecules (sPS: about one bead in five ends the sweeps strained, and these few carry most of the
excess angle and Lennard-Jones energy).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import STRAINED_PAIR, STRAINED_TERM
from ..environment import SystemPlan, graph_colours

OUTLIER_MADS = 3.0  # a step's energy this many (scaled) median absolute deviations above its template's median
OUTLIER_FLOOR = 1.0  # kJ/mol: the least deviation counted as one MAD (templates whose copies agree closely)
MIN_COPIES = 8  # templates with fewer copies in the system are never called outliers


def gibbs_schedule(plan: SystemPlan, neighbours: torch.Tensor, steps: np.ndarray | None = None) -> list[np.ndarray]:
    """Step batches of one Gibbs sweep over `steps` (default: all): heavy phase, then hydrogens.

    In each phase, steps of one length are coloured among themselves (`graph_colours` on the bead
    neighbourhood graph) and one colour is one batch: no batch pads short steps to long ones.
    """
    chosen = np.zeros(len(plan.step_bead), dtype=bool)
    chosen[slice(None) if steps is None else steps] = True
    batches = []
    for heavy in (True, False):
        phase = np.flatnonzero((plan.step_heavy == heavy) & chosen)
        for length in np.unique(plan.step_length[phase]):
            members = phase[plan.step_length[phase] == length]
            colour = graph_colours(neighbours, plan.step_bead[members])
            batches += [members[colour == k] for k in np.unique(colour)]
    return batches


def step_templates(plan: SystemPlan) -> np.ndarray:
    """(S,) template of each step: steps of the same bead of the same molecule type in the same
    phase (heavy or hydrogen) share one, so their energies are comparable."""
    key = np.stack(
        [plan.molecule_type[plan.bead_molecule[plan.step_bead]], plan.bead_rank[plan.step_bead], plan.step_heavy], 1
    )
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


def outlier_steps(energy: np.ndarray, templates: np.ndarray, mads: float = OUTLIER_MADS) -> np.ndarray:
    """(S,) bool: steps whose energy lies more than `mads` scaled median absolute deviations (at
    least `OUTLIER_FLOOR`) above the median of their template's copies; templates with fewer than
    `MIN_COPIES` copies have none."""
    out = np.zeros(len(energy), dtype=bool)
    for t in np.unique(templates):
        members = templates == t
        if members.sum() < MIN_COPIES:
            continue
        e = energy[members]
        median = np.median(e)
        spread = max(1.4826 * float(np.median(np.abs(e - median))), OUTLIER_FLOOR)
        out[members] = e > median + mads * spread
    return out


def repair_steps(
    energy: np.ndarray, worst_pair: np.ndarray, worst_term: np.ndarray, templates: np.ndarray, outliers_too: bool
) -> np.ndarray:
    """(S,) bool: steps with a strained contact (`STRAINED_PAIR`) or bent term (`STRAINED_TERM`)
    and, if `outliers_too`, energy outliers among their template's copies (`outlier_steps`)."""
    strained = (worst_pair > STRAINED_PAIR) | (worst_term > STRAINED_TERM)
    return strained | outlier_steps(energy, templates, OUTLIER_MADS) if outliers_too else strained


def repair_schedule(plan: SystemPlan, neighbours: torch.Tensor, chosen: np.ndarray) -> list[np.ndarray]:
    """Batches of every step of the beads with a `chosen` step (see `repair_steps`; a strained
    hydrogen step often hangs on strained heavy atoms, re-placed heavy atoms need their hydrogens), the
    beads coloured among themselves and re-placed colour by colour, heavy atoms then hydrogens:
    each bead is placed among complete, current neighbours (no hydrogen left where heavy atoms
    moved). Steps of different lengths share a batch (padded steps are not generated): strained
    beads are few but need many colours in a dense system, so one batch per colour and phase."""
    beads = np.unique(plan.step_bead[chosen])
    if not len(beads):
        return []
    colour = np.full(len(plan.bead_rank), -1)
    colour[beads] = graph_colours(neighbours, beads)
    step_colour = colour[plan.step_bead]
    batches = [
        np.flatnonzero((step_colour == c) & (plan.step_heavy == heavy))
        for c in np.unique(colour[beads])
        for heavy in (True, False)
    ]
    return [steps for steps in batches if len(steps)]


def mirror_schedule(
    plan: SystemPlan, neighbours: torch.Tensor, atoms: np.ndarray, centres: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(heavy, hydrogen) batches to re-place around mirrored centres (`atoms` (M, 4), see
    `StereoCheck.mirror_inverted`; `centres`: every recorded centre): the heavy steps of the beads
    that own a neighbour of a mirrored centre but no centre at all (sPS: the phenyl ring, oriented
    for the inverted form, which left the methine hydrogen eclipsing an ortho ring atom), then the
    hydrogen steps of the beads that own any of `atoms`. Beads that own a centre keep their heavy
    atoms: moving them could invert it."""
    side = np.setdiff1d(plan.atom_owner[atoms[:, 1:]], plan.atom_owner[centres])
    owners = np.unique(plan.atom_owner[atoms])
    heavy = np.flatnonzero(np.isin(plan.step_bead, side) & plan.step_heavy)
    hydrogens = np.flatnonzero(np.isin(plan.step_bead, owners) & ~plan.step_heavy)
    return gibbs_schedule(plan, neighbours, heavy), gibbs_schedule(plan, neighbours, hydrogens)
