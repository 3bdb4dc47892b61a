"""Figures of a standard-transformer run (docs/standard-transformers.md): the losses on a log axis with the theory's
levels and the phase steps, the induction score of each candidate subset over training, the predictive distances,
and the final offset profile of every head."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toyformer.runs import Run  # noqa: E402

LEVELS = {  # reference losses that read no model
    "unigram": ("unigram", "tab:olive"),
    "gih_single": ("best one-parent GIH", "tab:orange"),
    "gih_theory": ("GIH at S*, a* (theory)", "tab:purple"),
    "bayes": ("Bayes", "tab:green"),
}


def write_figures(run: Run, experiment) -> list[str]:
    records = run.metrics()
    out = run.path / "figures"
    out.mkdir(exist_ok=True)
    steps = np.array([r["step"] for r in records]) + 1  # log axis: step 0 drawn at 1
    key = "loss_val_last" if "loss_val_last" in records[-1] else "loss_val"
    predicted = experiment.theory["predicted_subset"]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    ax.plot(steps, [r["loss_train"] for r in records], label="train")
    ax.plot(steps, [r[key] for r in records], label="validation, x_{L+1}")
    for name, (label, color) in LEVELS.items():
        ax.axhline(experiment.references[f"loss_ref_{name}"], color=color, lw=0.8, ls="-.", label=label)
    for phase, step in experiment.phases.items():
        if step is not None:
            ax.axvline(step + 1, color="k", lw=0.6, ls=":")
            ax.text(step + 1, ax.get_ylim()[1], phase, rotation=90, va="top", fontsize=7)
    ax.set(xscale="log", xlabel="step + 1", ylabel="nll", title="loss")
    ax.legend(fontsize=7)

    ax = axes[1]
    heads = list(records[-1]["induction_score"])
    head = records[-1]["used_head"] if records[-1]["used_head"] in heads else heads[0]
    for subset in records[-1]["induction_score"][head]:
        series = [r["induction_score"][head][subset] for r in records]
        ax.plot(steps, series, label=subset, lw=2.2 if subset == predicted else 1)
    ax.set(xscale="log", xlabel="step + 1", ylabel="excess attention on S-matches", title=f"induction score, {head}")
    ax.legend(title=f"S (S* = {predicted})", fontsize=7, ncol=2)

    ax = axes[2]
    for name, color in (("gih_theory", "tab:purple"), ("bayes", "tab:green"), ("unigram", "tab:olive")):
        ax.plot(steps, [r[f"tv_to_{name}"] for r in records], color=color, label=LEVELS[name][0])
    ax.set(xscale="log", xlabel="step + 1", ylabel="total variation", title="distance of p(x_{L+1}) to")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)

    profile = records[-1]["offset_profile"]
    m = np.array(list(profile.values()))
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * m.shape[1], 0.9 + 0.45 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]), list(profile))
    for (h, o), v in np.ndenumerate(m):
        ax.text(o, h, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=7)
    ax.set(xlabel="offset i − j", title=f"attention mass by offset, step {records[-1]['step']}")
    plt.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=120)
    plt.close(fig)
    return ["training.png", "heads.png"]
