"""MLM corruption of documents (paper 1; docs/topic-structure.md §2), and its exact average in the population limit."""

from __future__ import annotations

import torch

from toyformer.topic.batch import Batch
from toyformer.topic.config import MASK, NUM_SPECIALS, PAD, DataConfig, MaskingConfig, num_ids
from toyformer.topic.lda import topic_word_matrix


def corrupt(ids: torch.Tensor, cfg: MaskingConfig, n_ids: int, gen: torch.Generator) -> Batch:
    """MLM corruption, docs/topic-structure.md §2: select word positions with p_m (re-drawn until each document has
    one); a selected token becomes [MASK], a random token, or stays, with probabilities mask/random/keep_prob."""
    is_word = ids >= NUM_SPECIALS
    selected = (torch.rand(ids.shape, generator=gen, device=ids.device) < cfg.select_prob) & is_word
    redo = ~selected.any(1) & is_word.any(1)
    while bool(redo.any()):  # rare: P(no selection) = (1 - p_m)^N
        rows = redo.nonzero().squeeze(1)
        draw = torch.rand((len(rows), ids.shape[1]), generator=gen, device=ids.device) < cfg.select_prob
        selected[rows] = draw & is_word[rows]
        redo = ~selected.any(1) & is_word.any(1)
    action = torch.rand(ids.shape, generator=gen, device=ids.device)
    low = 0 if cfg.random_pool == "all" else NUM_SPECIALS
    random_ids = torch.randint(low, n_ids, ids.shape, generator=gen, device=ids.device)
    inputs = torch.where(selected & (action < cfg.mask_prob), MASK, ids)
    is_random = selected & (action >= cfg.mask_prob) & (action < cfg.mask_prob + cfg.random_prob)
    inputs = torch.where(is_random, random_ids, inputs)
    keys = ids != PAD
    if cfg.drop_masked_keys:
        dropped = keys & ~selected
        keys = torch.where(dropped.any(1, keepdim=True), dropped, keys)  # never leave a document without keys
    key_bias = torch.zeros(ids.shape, device=ids.device).masked_fill_(~keys, float("-inf"))
    return Batch(inputs, key_bias, labels=ids, weight=selected.float())


def population_batch(
    theta: torch.Tensor, data: DataConfig, masking: MaskingConfig, phi: torch.Tensor | None = None
) -> Batch:
    """The N → ∞ limit of a batch of documents with mixtures θ, with the corruption averaged exactly.

    Every id appears once as a position (id k at position k). Keys are the words, weighted by the document's word
    distribution μ_θ through ``key_bias = log μ``: softmax attention over them is then exactly the attention over an
    infinitely long document. Each position is a query; ``soft`` holds the expected loss weight of every (query id,
    target word) pair under the corruption: [MASK] with p_mask·μ(w); the word itself kept with p_c·μ(w); any id of
    the random pool with p_r·μ(w)/|pool|. Each document's weights sum to one.
    """
    n, v = theta.shape[0], num_ids(data)
    mu_words = (theta @ (topic_word_matrix(data) if phi is None else phi).to(theta)).float()
    mu = torch.zeros(n, v, device=theta.device)
    mu[:, NUM_SPECIALS:] = mu_words
    ids = torch.arange(v, device=theta.device).expand(n, v)
    key_bias = torch.log(mu)  # -inf off the support: specials and absent words are not keys
    pool = torch.zeros(v, device=theta.device)
    pool[0 if masking.random_pool == "all" else NUM_SPECIALS :] = 1.0
    pool = pool / pool.sum()
    soft = masking.random_prob * pool[None, :, None] * mu[:, None, :]  # (n, query id, target id)
    soft[:, MASK, :] += masking.mask_prob * mu
    soft += masking.keep_prob * torch.diag_embed(mu)
    return Batch(ids, key_bias, soft=soft)
