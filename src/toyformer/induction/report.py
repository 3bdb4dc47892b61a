"""Figures of an induction run (docs/induction-heads.md §6): p_S per subset against step, a against step, losses on a
log axis with the reference lines, RPE heat-maps before and after training, and the final c_S bars. Stage boundaries are
marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toyformer.runs import Run  # noqa: E402

# reference losses drawn as lines: the fixed predictors and the theory's GIH at (S*, a*), none of which reads the model
REFERENCES = {
    "uniform": "grey",
    "unigram": "tab:olive",
    "gih_theory": "tab:purple",
    "bayes": "tab:green",
    "oracle": "k",
}


def _steps(records: list[dict]) -> np.ndarray:
    return np.array([r["step"] for r in records]) + 1  # log axis: step 0 drawn at 1


def _stage_lines(ax, experiment) -> None:
    for end in experiment.optimizer.ends[:-1]:
        ax.axvline(end + 1, color="k", lw=0.6, ls=":")


def _rpe(ax, rows: list[list[float | None]], title: str) -> None:
    m = np.array([[np.nan if w is None else w for w in row] for row in rows])
    im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("offset")
    ax.set_ylabel("head")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]), [str(h + 1) for h in range(m.shape[0])])
    for (h, o), w in np.ndenumerate(m):
        if not np.isnan(w):
            ax.text(o, h, f"{w:.2g}", ha="center", va="center", color="w", fontsize=7)
    plt.colorbar(im, ax=ax, fraction=0.046)


def write_figures(run: Run, experiment) -> list[str]:
    """Write the run's figures into ``run/figures`` and return their file names."""
    records = run.metrics()
    out = run.path / "figures"
    out.mkdir(exist_ok=True)
    steps = _steps(records)
    names = list(records[-1]["subset_share"])
    theory = experiment.theory

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for name in names:
        ax.plot(steps, [r["subset_share"][name] for r in records], label=name, lw=2 if "1" in name else 1)
    ax.set(
        xscale="log",
        xlabel="step + 1",
        ylabel="p_S",
        title=f"selector p_S (theory S* = {{{theory['predicted_subset']}}})",
    )
    ax.legend(title="heads", fontsize=7, ncol=2)
    ax = axes[1]
    ax.plot(steps, [r["a"] for r in records], color="tab:red")
    ax.set(xscale="log", xlabel="step + 1", ylabel="a", title="classifier a")
    ax = axes[2]
    ax.plot(steps, [r["loss_train"] for r in records], label="train")
    ax.plot(steps, [r["loss_val"] for r in records], label="validation")
    ax.plot(steps, [r["loss_ref_gih"] for r in records], ls="--", label="GIH at the learned S, a")
    for name, color in REFERENCES.items():
        label = "GIH at S*, a* (theory)" if name == "gih_theory" else name
        ax.axhline(experiment.references[f"loss_ref_{name}"], color=color, lw=0.8, ls="-.", label=label)
    ax.set(xscale="log", xlabel="step + 1", ylabel=experiment.cfg.train.loss, title="loss")
    ax.legend(fontsize=7)
    for ax in axes:
        _stage_lines(ax, experiment)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    _rpe(axes[0], records[0]["rpe"], f"RPE weights w, step {records[0]['step']}")
    _rpe(axes[1], records[-1]["rpe"], f"RPE weights w, step {records[-1]['step']}")
    last = records[-1]
    axes[2].bar(names, [last["c"][n] for n in names], color="tab:blue")
    axes[2].set(xlabel="subset (heads)", ylabel="c_S", title=f"final c_S (selected {{{last['selected_subset']}}})")
    fig.tight_layout()
    fig.savefig(out / "mechanism.png", dpi=120)
    plt.close(fig)
    return ["training.png", "mechanism.png"]
