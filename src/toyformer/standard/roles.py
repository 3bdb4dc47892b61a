"""Role probes (docs/standard-transformers.md, "Role probes"): what each attention head does, read from its
attention pattern and the tokens alone, so they apply to any model that exposes ``blocks.{l}.attn.hook_pattern``
(a standard transformer, or TF(M, H, d, D) through its literal forward).

- offset profile: a head's mean attention mass at each relative offset i − j; a head is a copier of offset k when
  that mass reaches ``copier_threshold``;
- induction score of a parent subset S: the attention mass the last query puts on keys whose preceding tokens at the
  offsets S equal the query's own history (the keys an S-induction head copies from), minus the mass uniform
  attention would put there. A head that attends exactly to S-matches scores 1 − chance on S, less on any subset
  of S (more keys match by chance) and on any superset (it also attends to keys that miss the extra offset);
- the used subset: the best-scoring subset over the last layer's heads, when its score reaches ``score_threshold``;
- predictive distances of the model's distribution of x_{L+1} to the reference predictors;
- phase steps: when the validation loss first passes the unigram, the best single-parent GIH and the full GIH.
"""

from __future__ import annotations

import torch

from toyformer.induction.predictors import history_matches

NO_ROLE = "none"


def offset_profile(pattern: torch.Tensor, window: int) -> torch.Tensor:
    """(H, window+1): each head's mean attention mass on offsets 0..window, over the sequences and the query positions
    that have every offset inside the sequence; ``pattern`` (B, H, T, T) is causal attention."""
    t = pattern.shape[-1]
    queries = torch.arange(window, t, device=pattern.device)
    keys = queries[:, None] - torch.arange(window + 1, device=pattern.device)  # (P, window+1): key i − o
    mass = pattern[:, :, queries[:, None], keys]  # (B, H, P, window+1)
    return mass.double().mean((0, 2))


def copier_offsets(profile: torch.Tensor, threshold: float) -> list[int | None]:
    """Per head, the offset ≥ 1 it copies (mass at least ``threshold``), or None."""
    mass, offset = profile[:, 1:].max(1)
    return [int(o) + 1 if m >= threshold else None for m, o in zip(mass.tolist(), offset.tolist(), strict=True)]


def induction_scores(last: torch.Tensor, inputs: torch.Tensor, subsets: list[tuple[int, ...]], d: int) -> torch.Tensor:
    """(H, subsets): the excess attention mass on S-matching keys. ``last`` (B, H, L) is the attention of the query
    that predicts x_{L+1} over the keys x_1..x_L of ``inputs`` (B, L); key l matches S when (x_{l−s})_{s∈S} equals
    (x_{L+1−s})_{s∈S}, the history of the token to predict."""
    out = []
    for subset in subsets:  # a handful of candidate subsets, each vectorised over sequences, heads and keys
        match, _ = history_matches(inputs, subset, d)
        match = match.to(last.dtype)
        mass = torch.einsum("bhl,bl->bh", last, match)
        out.append((mass - match.mean(1, keepdim=True)).mean(0))
    return torch.stack(out, dim=1).double()


def used_subset(scores: torch.Tensor, subsets: list[tuple[int, ...]], threshold: float) -> tuple[tuple[int, ...], int]:
    """The best-scoring subset over heads (``scores`` (H, subsets)) and its head, or ((), −1) when no score reaches
    ``threshold``."""
    best = int(scores.argmax())
    head, k = divmod(best, scores.shape[1])
    if float(scores.reshape(-1)[best]) < threshold:
        return (), -1
    return subsets[k], head


def distances(model: torch.Tensor, references: dict[str, torch.Tensor]) -> dict[str, float]:
    """Total variation and KL(reference ‖ model) of the model's distributions (B, d) to each reference (B, d)."""
    p = model.double()
    out = {}
    for name, q in references.items():
        q = q.double()
        out[f"tv_to_{name}"] = float(0.5 * (p - q).abs().sum(1).mean())
        kl = torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), 0.0)
        out[f"kl_to_{name}"] = float(kl.sum(1).mean())
    return out


PHASES = ("unigram", "partial", "full")  # the levels passed in order: Edelman et al. 2024's plateaus


def phase_steps(steps: list[int], losses: list[float], levels: dict[str, float], tolerance: float) -> dict:
    """The first probe step whose loss is within ``tolerance`` × (unigram − full) of each level (or None), and
    whether all three were passed in order."""
    slack = tolerance * (levels["unigram"] - levels["full"])
    out: dict = {}
    for name in PHASES:
        out[name] = next((s for s, v in zip(steps, losses, strict=True) if v <= levels[name] + slack), None)
    reached = [out[name] for name in PHASES]
    ordered = all(s is not None for s in reached) and reached == sorted(reached)
    return {"phase_steps": out, "phases_in_order": float(ordered)}
