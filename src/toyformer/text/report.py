"""Figures of a model of real text (docs/topic-structure.md §8): the per-layer × per-head heat-map of same-topic minus
different-topic attention, and the embedding cosine histograms of each word-pair class, for both ground truths."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TRUTH_TITLES = {"topics": "LDA topics", "labels": "category labels"}


def write_analysis_figures(out: Path, attention: dict[str, torch.Tensor], emb: dict[str, dict]) -> list[str]:
    """attention: truth → (layers, heads, classes) class means (classes as in probes.text.CLASSES);
    emb: truth → embedding_class_stats output. Returns the file names written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(attention), figsize=(5.5 * len(attention), 3.8), squeeze=False)
    for ax, (truth, means) in zip(axes[0], attention.items(), strict=True):
        gap = (means[..., 1] - means[..., 2]).numpy()
        limit = float(np.nanmax(np.abs(gap))) if np.isfinite(gap).any() else 1.0
        im = ax.imshow(gap, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_title(f"attention same − different ({TRUTH_TITLES[truth]})")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(gap.shape[1]))
        ax.set_yticks(range(gap.shape[0]))
        plt.colorbar(im, ax=ax, fraction=0.046, label="scaled attention (uniform = 0.01)")
    fig.tight_layout()
    fig.savefig(out / "attention_gap.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(emb), figsize=(5.5 * len(emb), 3.6), squeeze=False)
    for ax, (truth, stats) in zip(axes[0], emb.items(), strict=True):
        for name in ("same_topic", "diff_topic", "unassigned"):
            hist = np.asarray(stats[f"hist_{name}"])
            if hist.sum() == 0:
                continue
            edges = np.linspace(-1, 1, len(hist) + 1)
            mean = stats.get(f"emb_cos_{name}")
            label = f"{name.replace('_', ' ')} (mean {mean:.3f})"
            ax.stairs(hist / hist.sum() / (edges[1] - edges[0]), edges, label=label)
        ax.set_title(f"embedding cosine by pair class ({TRUTH_TITLES[truth]})")
        ax.set_xlabel("cosine of the two words' embeddings")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "embedding_classes.png", dpi=120)
    plt.close(fig)
    return ["attention_gap.png", "embedding_classes.png"]
