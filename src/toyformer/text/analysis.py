"""`toyformer analyze`: topic structure of a pretrained BERT-family encoder on a corpus (paper 1,
docs/topic-structure.md §8).

Two ground truths side by side: LDA topics fitted on the corpus (cached) and the corpus's category labels. For
each: embedding inner-product and cosine class means over the model's whole-word vocabulary, and per-layer,
per-head attention class means on the corpus's documents. Written as a run directory (config, meta, summary with
checks, figures, attention.json with every layer and head).
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from toyformer.claims import summarize
from toyformer.config import ConfigError
from toyformer.runs import Run, atomic_write
from toyformer.text.config import AnalysisConfig
from toyformer.text.corpus import STOP_WORDS, check_source, documents
from toyformer.text.probes import CLASSES, AttentionClassStats, WordMatcher, embedding_class_stats
from toyformer.text.topics import Progress, Topics, _no_progress, corpus_topics


def load_model(model_dir: str, device: str):
    """(tokenizer, model) from a local folder; attention computed explicitly so that it can be returned."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a HuggingFace model folder (no config.json); give a local model folder")
    try:
        from transformers import AutoModel, AutoTokenizer  # optional: the wiki extra
    except ImportError:
        raise ConfigError("analysing a pretrained model needs transformers: pip install 'toyformer[wiki]'") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_dir}: cannot load the model or its tokenizer ({str(e).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise ConfigError(f"{model_dir}: the tokenizer has no fast (Rust) version, which word alignment needs")
    return tokenizer, model.to(device).eval()


def random_bert(folder: Path, texts, vocab_size: int, layers: int, heads: int, width: int, seed: int = 0) -> Path:
    """A BERT with random weights and a WordPiece tokenizer trained on ``texts``, saved as a model folder that
    `toyformer analyze` reads: tests and benchmarks need no download."""
    try:
        import transformers  # optional: the wiki extra
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        raise ConfigError("a random BERT needs transformers: pip install 'toyformer[wiki]'") from None
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1)
    specials = {f"{name}_token": f"[{name.upper()}]" for name in ("unk", "sep", "cls", "pad", "mask")}
    tokenizer = transformers.BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, **specials)
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def truth_tables(topics: Topics) -> dict[str, torch.Tensor]:
    """Word → classes over the corpus vocabulary, (V, T) and (V, C) bool: 'topics' (LDA) and 'labels'."""
    return {
        "topics": torch.from_numpy(topics.assignment()),
        "labels": torch.from_numpy(topics.label_assignment()),
    }


def model_vocabulary(tokenizer, matcher: WordMatcher, n_vocab: int, stop: frozenset[str]):
    """The model's whole-word tokens: rows (Vm,) bool (alphabetic, not a stop word, not a piece or special) and
    the corpus-vocabulary id of each token (-1: none)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(n_vocab)))
    special = set(tokenizer.all_special_tokens)
    rows = torch.tensor([t.isalpha() and t.lower() not in stop and t not in special for t in tokens])
    ids = torch.arange(n_vocab)[:, None]
    to_vocab = matcher(ids, torch.zeros_like(ids))[:, 0]  # a one-piece word: its own code
    return rows, to_vocab


def pair_agreement(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> dict[str, float]:
    """Over pairs of distinct words assigned by both truths: P(same label | same topic), P(same label | different
    topic). a: (V, T), b: (V, C) bool."""
    both = a.any(1) & b.any(1)
    a, b = a[both].float(), b[both].float()
    hits = torch.zeros(2, 2, dtype=torch.float64)  # [same topic?][same label?]
    for start in range(0, len(a), chunk):
        stop = min(start + chunk, len(a))
        st = (a[start:stop] @ a.T) > 0
        sl = (b[start:stop] @ b.T) > 0
        st[torch.arange(stop - start), torch.arange(start, stop)] = False
        off = torch.ones_like(st)
        off[torch.arange(stop - start), torch.arange(start, stop)] = False
        for i, t in enumerate((~st & off, st)):
            hits[i, 1] += float((t & sl).sum())
            hits[i, 0] += float((t & ~sl).sum())
    rate = hits[:, 1] / hits.sum(1).clamp_min(1)
    return {"truth_same_label_given_same_topic": float(rate[1]), "truth_same_label_given_diff_topic": float(rate[0])}


def batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(texts, size)):
        yield chunk


def word_index_of(encoding, rows: int) -> torch.Tensor:
    """(B, T) each piece's word index in its sequence, -1 for specials and padding (None → NaN → -1)."""
    index = np.stack([np.array(encoding.word_ids(i), dtype=float) for i in range(rows)])
    return torch.from_numpy(np.nan_to_num(index, nan=-1.0)).long()


def class_summary(emb: dict, attention: torch.Tensor, prefix: str = "") -> dict:
    """The public keys of one ground truth: embedding class means and the attention class means averaged over
    every layer and head, and attn_head_gap (layer → per-head same − different topic)."""
    out = {f"{prefix}{k}": v for k, v in emb.items() if not k.startswith("hist_")}
    for k, name in enumerate(CLASSES):
        value = attention[..., k].nanmean()
        if not torch.isnan(value):
            out[f"{prefix}attn_{name}"] = float(value)
    gap = attention[..., 1] - attention[..., 2]
    out[f"{prefix}attn_head_gap"] = {str(layer): [round(float(x), 6) for x in row] for layer, row in enumerate(gap)}
    if not torch.isnan(gap).all():
        out[f"{prefix}attn_heads_topical"] = float((gap > 0).double().mean())
    return out


def analyze(cfg: AnalysisConfig, out: Path | None = None, progress: Progress | None = None) -> Run:
    progress = progress or _no_progress
    check_source(cfg.corpus)
    device = "cuda" if cfg.device == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is visible here; use --device cpu")
    tokenizer, model = load_model(cfg.model_dir, device)
    topics, cache, cached = corpus_topics(cfg.corpus, cfg.vocab, cfg.topics, progress)
    run = Run.create(cfg, out)
    run.update_meta(topics_cache=str(cache), topics_cached=cached)

    truths = truth_tables(topics)
    matcher = WordMatcher(tokenizer, topics.vocab.words, max_pieces=cfg.max_length)
    table = model.get_input_embeddings().weight.detach()
    rows, to_vocab = model_vocabulary(tokenizer, matcher, len(table), STOP_WORDS[cfg.corpus.lang])
    emb = {}
    for name, z in truths.items():
        model_z = z[to_vocab.clamp(min=0)] & (to_vocab >= 0)[:, None]
        emb[name] = embedding_class_stats(table, model_z.to(device), rows.to(device))

    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    stats = {name: AttentionClassStats(z.to(device), n_layers, n_heads) for name, z in truths.items()}
    advance = progress("attention", cfg.docs)
    texts = (doc.text for doc in islice(documents(cfg.corpus), cfg.docs))
    seen = 0
    with torch.no_grad():
        for chunk in batches(texts, cfg.batch_size):
            enc = tokenizer(chunk, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt")
            word_index = word_index_of(enc, len(chunk))
            word_vocab = matcher(enc["input_ids"], word_index)
            inputs = {k: v.to(device) for k, v in enc.items()}
            attentions = model(**inputs, output_attentions=True).attentions
            for s in stats.values():
                s.add(attentions, word_index.to(device), word_vocab.to(device))
            seen += len(chunk)
            advance(len(chunk))

    means = {name: s.means() for name, s in stats.items()}
    final = class_summary(emb["topics"], means["topics"])
    final |= class_summary(emb["labels"], means["labels"], "label_")
    final |= pair_agreement(truths["topics"], truths["labels"])
    final |= {
        "topics_per_doc": topics.topics_per_doc,
        "topic_label_nmi": topics.topic_label_nmi(),
        "docs": seen,
        "vocab_words": len(topics.vocab),
        "vocab_single_token": float(
            (torch.bincount(to_vocab[to_vocab >= 0], minlength=len(topics.vocab)) > 0).double().mean()
        ),
        "words_with_topics": float(truths["topics"].any(1).double().mean()),
        "words_with_labels": float(truths["labels"].any(1).double().mean()),
    }
    detail = {
        "classes": list(CLASSES),
        "attention": {name: m.tolist() for name, m in means.items()},
        "embedding_hist": {name: {k: v for k, v in e.items() if k.startswith("hist_")} for name, e in emb.items()},
        "labels": topics.labels,
    }
    atomic_write(run.path / "attention.json", json.dumps(detail))
    from toyformer.text.report import write_analysis_figures  # matplotlib, only once figures are drawn

    figures = write_analysis_figures(run.path / "figures", means, emb)
    run.update_meta(peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    run.write_summary(summarize(cfg, final, {}) | {"figures": figures})
    return run
