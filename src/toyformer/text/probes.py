"""Topic structure of a model of real text, docs/topic-structure.md §8: embedding and attention class means against word
→ topics ground truths, vectorised (no loops over words or word pairs).

Word-pair classes (``toyformer.text.pairs``) over ordered pairs of distinct words for embeddings, and of word
occurrences, i = j included, for attention (where ``same_word`` is the same vocabulary word).
"""

from __future__ import annotations

import torch

from toyformer.text.pairs import CLASSES, pair_classes

HIST_BINS = 100


@torch.no_grad()
def embedding_class_stats(
    table: torch.Tensor, topics: torch.Tensor, rows: torch.Tensor | None = None, chunk: int = 2048
) -> dict[str, float | list]:
    """Mean inner product and cosine of the embedding rows per class of ordered pairs of distinct words, and
    cosine histograms of each class over [-1, 1] (``hist_<class>``, HIST_BINS bins).

    table: (V, d) embeddings; topics: (V, T) bool topic sets; rows: (V,) bool, the rows taking part (default all).
    Pairs of two words with topics are visited ``chunk`` rows at a time (memory chunk × V). The unassigned class,
    most pairs of a 30k vocabulary, is the rest: its sums are exact, from ‖Σ e‖² − Σ‖e‖² over all pairs minus the
    assigned pairs; its histogram is taken over the pairs of 512 seeded sample rows.
    """
    table = table.double()
    rows = torch.ones(len(table), dtype=torch.bool, device=table.device) if rows is None else rows
    index = rows.nonzero().squeeze(1)
    e, z = table[index], topics[index].to(table.device)
    unit = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    has = z.any(1)
    out: dict[str, float | list] = {}
    sums = torch.zeros(3, 3, dtype=torch.float64)  # classes same/diff/unassigned × (pairs, inner product, cosine)
    ea, ua, za = e[has], unit[has], z[has].float()
    hists = torch.zeros(3, HIST_BINS, dtype=torch.float64)
    for start in range(0, len(ea), chunk):
        stop = min(start + chunk, len(ea))
        share = (za[start:stop] @ za.T) > 0
        code = torch.where(share, 0, 1)
        code[torch.arange(stop - start), torch.arange(start, stop)] = 2  # the word itself: not a pair
        code = code.flatten()
        cos = (ua[start:stop] @ ua.T).flatten()
        for col, weights in enumerate((None, (ea[start:stop] @ ea.T).flatten(), cos)):
            sums[:, col] += torch.bincount(code, weights, minlength=3).cpu()[:3].double()
        bins = ((cos + 1) * (HIST_BINS / 2)).long().clamp_(0, HIST_BINS - 1)
        hists += torch.bincount(code * HIST_BINS + bins, minlength=3 * HIST_BINS).view(3, HIST_BINS).double().cpu()
    sums[2] = 0.0
    n, n_a = len(e), len(ea)
    for col, (x, xa) in enumerate(((e, ea), (unit, ua)), 1):
        everything = float(x.sum(0).square().sum() - x.square().sum())
        assigned = float(xa.sum(0).square().sum() - xa.square().sum())
        sums[2, col] = everything - assigned
    sums[2, 0] = n * (n - 1) - n_a * (n_a - 1)
    # unassigned histogram: the pairs of sample rows with at least one word without topics
    gen = torch.Generator().manual_seed(0)
    sample = torch.randperm(n, generator=gen)[: min(chunk, 512)].to(e.device)
    cos = unit[sample].float() @ unit.T.float()
    keep = ~(has[sample][:, None] & has[None, :])
    keep[torch.arange(len(sample)), sample] = False
    hists[2] = torch.histc(cos[keep].float(), HIST_BINS, -1.0, 1.0).double().cpu()
    for c, name in enumerate(CLASSES[1:]):
        count = int(sums[c, 0])
        if count:
            out[f"emb_{name}"] = float(sums[c, 1] / count)
            out[f"emb_cos_{name}"] = float(sums[c, 2] / count)
        out[f"emb_pairs_{name}"] = count
        out[f"hist_{name}"] = hists[c].tolist()
    return out


def piece_positions(word_index: torch.Tensor) -> torch.Tensor:
    """(B, T): each piece's place inside its word (0 for the first piece), from the word index of every piece
    (-1 for special tokens and padding)."""
    t = torch.arange(word_index.shape[1], device=word_index.device).expand_as(word_index)
    previous = torch.cat([torch.full_like(word_index[:, :1], -2), word_index[:, :-1]], dim=1)
    first = torch.where(word_index != previous, t, 0).cummax(dim=1).values
    return t - first


class WordMatcher:
    """Finds vocabulary words among a tokenizer's word pieces by a polynomial hash of each word's piece ids,
    computed for all words of a batch at once (two 31-bit hashes, so collisions are out of reach).

    The vocabulary's words are tokenised once, alone, as they are written lower-case and capitalised; a word in a
    document matches when its pieces are the same ids (a word cut by truncation does not match).
    """

    MOD = 2_147_483_647
    BASES = (1_000_003, 998_244_353)

    def __init__(self, tokenizer, words: list[str], max_pieces: int = 512):
        self.powers = torch.tensor(
            [[pow(b, k, self.MOD) for k in range(max_pieces)] for b in self.BASES], dtype=torch.int64
        )
        variants = words + [w.capitalize() for w in words]
        pieces = tokenizer(variants, add_special_tokens=False)["input_ids"]
        codes = torch.tensor([self._code(p) for p in pieces], dtype=torch.int64)
        ids = torch.arange(len(variants)) % len(words)
        self.codes, order = codes.sort()
        self.ids = ids[order]

    def _code(self, pieces: list[int]) -> int:
        parts = [sum(p * int(pw[k]) for k, p in enumerate(pieces)) % self.MOD for pw in self.powers]
        return parts[0] * self.MOD + parts[1]

    def __call__(self, input_ids: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
        """(B, W) the vocabulary id of every word of each sequence (-1: not a vocabulary word), W = the most words
        of any sequence. input_ids, word_index: (B, T) pieces and their word index (-1: special or padding)."""
        b = input_ids.shape[0]
        n_words = int(word_index.max()) + 1 if word_index.numel() else 0
        rank = piece_positions(word_index)
        valid = word_index >= 0
        slot = torch.where(valid, word_index, n_words)  # specials go to a spare slot
        parts = []
        for powers in self.powers:
            term = (input_ids * powers[rank.clamp(max=len(powers) - 1)]) % self.MOD
            term = torch.where(valid, term, 0)
            parts.append(torch.zeros(b, n_words + 1, dtype=torch.int64).scatter_add_(1, slot, term) % self.MOD)
        code = (parts[0] * self.MOD + parts[1])[:, :n_words].contiguous()
        at = torch.searchsorted(self.codes, code).clamp(max=len(self.codes) - 1)
        return torch.where(self.codes[at] == code, self.ids[at], -1)


class AttentionClassStats:
    """Accumulates, per layer and head, the class means of word-to-word attention over batches of documents.

    Pieces are merged into words: a query word's attention is the mean over its pieces of the attention they
    pay, and a key word receives the sum over its pieces. Only vocabulary words count (stop words, punctuation,
    numbers and rare words are dropped on both sides). Each value is scaled by n/100, n the number of words of the
    sequence (pieces merged, specials not counted), so that uniform attention reads about 0.01 at any length.
    """

    def __init__(self, topics: torch.Tensor, n_layers: int, n_heads: int):
        self.topics = topics
        self.sums = torch.zeros(n_layers, n_heads, len(CLASSES), dtype=torch.float64)
        self.counts = torch.zeros(len(CLASSES), dtype=torch.float64)

    @torch.no_grad()
    def add(self, attentions: list[torch.Tensor], word_index: torch.Tensor, word_vocab: torch.Tensor) -> None:
        """attentions: per layer (B, H, T, T); word_index: (B, T) word of each piece (-1: none); word_vocab:
        (B, W) vocabulary id of each word (-1: not counted)."""
        b, t = word_index.shape
        content = word_vocab >= 0
        z = self.topics[word_vocab.clamp(min=0)] & content[..., None]  # (B, W, T)
        same = (word_vocab[:, :, None] == word_vocab[:, None, :]) & content[:, :, None] & content[:, None, :]
        pair_ok = content[:, :, None] & content[:, None, :]
        masks = torch.stack([m & pair_ok for m in pair_classes(z, z, same).values()], 1)  # (B, K, W, W)
        # word-level classes → piece pairs: a spare word slot (W) stands for specials and padding (in no class)
        w = word_vocab.shape[1]
        slot = torch.where(word_index >= 0, word_index, w)
        masks = torch.nn.functional.pad(masks, (0, 1, 0, 1))
        rows = masks.gather(2, slot[:, None, :, None].expand(-1, len(CLASSES), -1, w + 1))
        piece_masks = rows.gather(3, slot[:, None, None, :].expand(-1, len(CLASSES), t, -1)).float()  # (B,K,T,T)
        ones = torch.ones(b, t, device=slot.device)
        pieces = torch.zeros(b, w + 1, device=slot.device).scatter_add_(1, slot, ones)
        per_piece = 1.0 / pieces.gather(1, slot)  # (B, T): 1 / pieces of the piece's word
        n_words = (word_index.max(1).values + 1).clamp(min=1).double()
        query = per_piece * (n_words / 100.0)[:, None].float()
        weighted = piece_masks * query[:, None, :, None]
        for layer, attention in enumerate(attentions):
            self.sums[layer] += torch.einsum("bhqk,bcqk->hc", attention.float(), weighted).double().cpu()
        self.counts += torch.einsum("bcqk,bq,bk->c", piece_masks, per_piece, per_piece).double().cpu()

    def means(self) -> torch.Tensor:
        """(layers, heads, classes) class means; NaN for a class with no pair."""
        return self.sums / self.counts.where(self.counts > 0, torch.nan)
