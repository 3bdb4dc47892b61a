"""What a standard-transformer run's report page shows (``toyformer.report``): the loss passing the unigram, the
one-parent GIH and the full GIH (the phase steps marked), each head's attention pattern and role scores under the
step slider: first-layer heads becoming copiers of one offset, a last-layer head becoming the induction head of a
parent subset (docs/standard-transformers.md). A pure function of the config, the summary and the records."""

from __future__ import annotations

from toyformer.report.page import reference_lines
from toyformer.standard.config import StandardConfig

LEVELS = {
    "unigram": "in-context unigram",
    "gih_single": "best one-parent GIH",
    "gih_theory": "GIH at (S*, a*), theory",
    "bayes": "Bayes",
}


def page(cfg: StandardConfig, summary: dict, records: list[dict]) -> dict:
    refs = reference_lines(summary, LEVELS)
    phases = summary.get("final", {}).get("phase_steps")
    marks = []
    if isinstance(phases, dict):  # a run's (a group reports no phase steps of its own)
        marks = [{"label": f"{name} level passed", "step": s} for name, s in phases.items() if s is not None]
    heads = [f"L{layer}H{h}" for layer in range(cfg.model.layers) for h in range(cfg.model.heads)]
    predicted = summary.get("theory", {}).get("predicted_subset")
    last = records[-1] if records else {}
    scores = last.get("induction_score", {})
    curves = [
        {"title": "loss (validation: at x_{L+1})", "series": ["loss_train", "loss_val", "loss_val_last"], "refs": refs},
        {
            "title": "share of the gap closed (1: the GIH at (S*, a*))",
            "series": ["gap_share"],
            "refs": [{"label": "the theory's GIH", "value": 1.0}],
        },
        {"title": "total variation of p(x_{L+1}) to", "series": ["tv_to_gih_theory", "tv_to_bayes", "tv_to_unigram"]},
        {
            "title": "KL(reference ‖ model) of p(x_{L+1})",
            "series": ["kl_to_gih_theory", "kl_to_bayes", "kl_to_unigram"],
        },
        {
            "title": f"induction score: best head, and on S* = {{{predicted}}}",
            "series": ["used_score", "predicted_score"],
        },
    ]
    for head, subsets in scores.items():
        curves.append(
            {
                "title": f"induction score of {head} per parent subset",
                "series": [f"induction_score.{head}.{s}" for s in subsets],
            }
        )
    views = [
        {
            "kind": "heatmap",
            "metric": "offset_profile",
            "title": "attention mass by offset i − j (rows: heads; columns: offsets 0, 1, …)",
            "sequential": True,
            "rowLabel": "head",
            "colLabel": "offset",
        },
        {
            "kind": "heatmap",
            "metric": "induction_score",
            "title": f"induction score per last-layer head (rows) and parent subset (columns); S* = {{{predicted}}}",
            "rowLabel": "head",
            "colLabel": "subset",
        },
        {
            "kind": "heatmap",
            "matrix": "attention",
            "title": "{} attention on a validation chain, its last positions: query (row) → key",
            "titles": heads,
            "sequential": True,
            "ticks": "positions",
            "tick": "position {}",
            "rowLabel": "query",
            "colLabel": "key",
        },
        {
            "kind": "heatmap",
            "matrix": "last_query",
            "title": "{} attention of the last query over every key, validation chains (rows)",
            "titles": heads,
            "sequential": True,
            "cellTicks": "chains",
            "cellTick": "token {}",
            "rowLabel": "chain",
            "colLabel": "key position",
        },
        {
            "kind": "values",
            "title": "at this step",
            "metrics": ["used_subset", "used_head", "copier_offsets", "copy_offset", "gap_share", "loss_val_last"],
        },
    ]
    return {"curves": curves, "marks": marks, "views": views}
