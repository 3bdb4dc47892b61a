"""Figures of a topic run: heat-maps of EEᵀ, the OV circuit (W^V) and the QK circuit (W_QᵀW_K) over words;
attention maps of a few dev documents; metric curves on a log step axis with the detected stage onsets marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from toyformer.runs import Run  # noqa: E402
from toyformer.topic.config import NUM_SPECIALS, PAD  # noqa: E402
from toyformer.topic.probes import ov_circuit, qk_circuit  # noqa: E402
from toyformer.topic.stages import STAGE_GROUPS, onsets  # noqa: E402


def _heatmap(ax, matrix: torch.Tensor, title: str, block: int | None) -> None:
    m = matrix.detach().double().cpu()
    limit = float(m.abs().max()) or 1.0
    im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("word")
    ax.set_ylabel("word")
    if block:
        for k in range(block, m.shape[0], block):
            ax.axhline(k - 0.5, color="k", lw=0.3)
            ax.axvline(k - 0.5, color="k", lw=0.3)
    plt.colorbar(im, ax=ax, fraction=0.046)


def write_figures(run: Run, experiment) -> list[str]:
    """Write the run's figures into ``run/figures`` and return their file names."""
    model, cfg = experiment.model, experiment.cfg
    # words with topics, grouped by their first topic (synthetic topics: the id order itself)
    z = experiment.id_topics.to(model.W_E.device)
    first = torch.where(z.any(1), z.float().argmax(1), z.shape[1]) * len(z) + torch.arange(len(z), device=z.device)
    first[:NUM_SPECIALS] = first.max() + 1
    words = torch.argsort(first)[: int(z[NUM_SPECIALS:].any(1).sum())]
    synthetic = cfg.data.kind == "lda" and cfg.data.topic_sizes is None
    block = cfg.data.words_per_topic if synthetic else None
    out = run.path / "figures"
    out.mkdir(exist_ok=True)
    written = []
    with torch.no_grad():
        mats = [("OV circuit (W^V)", ov_circuit(model)[words][:, words])]
        if cfg.model.embedding == "trained":
            table = model.embedding_table()
            mats.insert(0, ("embedding Gram EEᵀ", (table @ table.T)[words][:, words]))
        qk = qk_circuit(model)
        if qk is not None:
            # softmax ignores per-query constants and per-key saliences swamp the picture: show both removed
            qk = qk[words][:, words]
            qk = qk - qk.mean(0, keepdim=True) - qk.mean(1, keepdim=True) + qk.mean()
            mats.append(("QK circuit (W_QᵀW_K), double-centred", qk))
        fig, axes = plt.subplots(1, len(mats), figsize=(5.2 * len(mats), 4.5))
        for ax, (title, m) in zip(list(axes) if len(mats) > 1 else [axes], mats, strict=True):
            _heatmap(ax, m, title, block)
        fig.tight_layout()
        fig.savefig(out / "matrices.png", dpi=110)
        plt.close(fig)
        written.append("matrices.png")

        probe = experiment.probes[1]
        _, patterns = model(probe.ids[:4], probe.key_bias[:4])
        pattern = patterns[0].mean(1)
        fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
        for k, ax in enumerate(axes):
            ids = probe.ids[k]
            n = int((ids != PAD).sum())
            order = torch.argsort(first[ids[:n]])  # group tokens by topic, then by id
            att = pattern[k].expand(len(ids), len(ids))[:n, :n][order][:, order] * n / 100
            im = ax.imshow(att.cpu().numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"dev document {k}: attention ×n/100", fontsize=9)
            ax.set_xlabel("key (tokens sorted by id, so by topic)")
            ax.set_ylabel("query")
            plt.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(out / "attention.png", dpi=110)
        plt.close(fig)
        written.append("attention.png")

    records = run.metrics()
    steps = [max(r["step"], 1) for r in records]
    panels = [
        ("loss", ["loss_train", "loss_dev"]),
        ("block contrast", ["wv_same_word", "wv_same_topic", "wv_diff_topic", "emb_same_topic", "emb_diff_topic"]),
        ("attention class means", ["attn_same_token", "attn_same_topic", "attn_diff_topic"]),
        ("distance from init", [f"dist_{g}" for g in STAGE_GROUPS]),
        ("gradient norm", [f"grad_{g}" for g in STAGE_GROUPS]),
    ]
    marks = onsets(records, STAGE_GROUPS, cfg.probes.onset_fraction)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            if any(key in r for r in records):
                ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key, marker=".", ms=3)
        for i, (name, step) in enumerate(marks.items()):
            if step is not None:
                ax.axvline(
                    max(step, 1), color=f"C{i + 5}", ls="--", lw=0.8, label=name.replace("onset_step_", "onset ")
                )
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    written.append("curves.png")
    return written
