"""What an induction run's report page shows (``toyformer.report``): p_S collapsing onto the subset whose heads copy
S*, a growing, the RPE weights of each head sharpening on one offset, and the classifier's copy weights on a few
validation chains under the step slider, with the reference losses and the theory's a* as lines and the stage
boundaries marked (docs/induction-heads.md §6). A pure function of the config, the summary and the records."""

from __future__ import annotations

from toyformer.induction.config import InductionConfig
from toyformer.report.page import final_value, reference_lines

REFERENCES = {  # reference losses that read no trained model
    "uniform": "uniform",
    "unigram": "in-context unigram",
    "gih_theory": "GIH at (S*, a*), theory",
    "bayes": "Bayes",
    "oracle": "true kernel",
}


def page(cfg: InductionConfig, summary: dict, records: list[dict]) -> dict:
    refs = reference_lines(summary, REFERENCES)
    a_star = final_value(summary, "gih_theory_a")
    ends, total = [], 0
    for stage in cfg.train.stages:
        total += stage.steps
        ends.append(total)
    marks = [{"label": f"stage {k + 2} starts", "step": end} for k, end in enumerate(ends[:-1])]
    names = list(records[-1]["subset_share"]) if records and "subset_share" in records[-1] else []
    selected = max(names, key=lambda n: records[-1]["subset_share"][n]) if names else None
    predicted = summary.get("theory", {}).get("predicted_subset")
    curves = [
        {"title": "loss", "series": ["loss_train", "loss_val", "loss_val_last", "loss_ref_gih"], "refs": refs},
        {"title": "selector p_S per head subset", "series": [f"subset_share.{n}" for n in names]},
        {
            "title": "classifier a",
            "series": ["a"],
            "refs": [{"label": "a* (theory's best a at S*)", "value": a_star}] if a_star is not None else [],
        },
        {
            "title": "share of the gap closed (1: the GIH at (S*, a*))",
            "series": ["gap_share"],
            "refs": [{"label": "the theory's GIH", "value": 1.0}],
        },
        {
            "title": f"p_S of S* = {{{predicted}}} and of the largest subset",
            "series": ["predicted_share", "selected_share"],
        },
        {"title": "total variation to the GIH at the learned S and a", "series": ["tv_to_gih"]},
    ]
    views = [
        {
            "kind": "heatmap",
            "metric": "rpe",
            "title": "RPE weights w per head (rows) and offset i − j (columns; grey: outside the head's band)",
            "rowLabel": "head",
            "colLabel": "offset",
        },
        {
            "kind": "heatmap",
            "metric": "copy_attention",
            "title": "mean copy weight per head (rows) on each offset (columns)",
            "sequential": True,
            "rowLabel": "head",
            "colLabel": "offset",
        },
        {
            "kind": "bars",
            "metric": "subset_share",
            "title": "p_S per head subset (bit k: head k+1 in S)",
            "max": 1,
            "highlight": [selected] if selected else [],
            "note": f"red: the subset that leads at the end; the theory's S* = {{{predicted}}} (offsets)",
        },
        {
            "kind": "heatmap",
            "matrix": "copy_weights",
            "title": "the classifier's copy weights over positions at the query x_{L+1}, validation chains (rows)",
            "sequential": True,
            "cellTicks": "chains",
            "cellTick": "token {}",
            "rowLabel": "chain",
            "colLabel": "position",
        },
        {"kind": "heatmap", "matrix": "qk", "title": "content QK circuit W_Q W_Kᵀ of head {}"},
        {
            "kind": "values",
            "title": "at this step",
            "metrics": ["a", "selected_subset", "predicted_share", "gap_share", "copy_offset", "loss_val"],
        },
    ]
    return {"curves": curves, "marks": marks, "views": views}
