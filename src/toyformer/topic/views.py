"""What a topic run's report page shows (``toyformer.report``): its curves grouped into panels, the stage onsets
marked on them, and the matrices of ``probes.Snapshot`` under the step slider: W^V forming its topic blocks, then
the attention turning to the topic (docs/topic-structure.md §6). A pure function of the config, the summary and the
metric records, so a group's page needs no experiment built."""

from __future__ import annotations

from toyformer.report.page import final_value
from toyformer.topic.config import TopicConfig
from toyformer.topic.stages import CONTRAST_REACHES, STAGE_GROUPS

CURVES = [
    ("loss", ["loss_train", "loss_dev"]),
    ("W^V (OV circuit): class means", ["wv_same_word", "wv_same_topic", "wv_diff_topic"]),
    ("block effects (Cohen's d: same − different topic)", ["wv_block_effect", "wv_gram_block_effect"]),
    ("block effects of E and QK", ["emb_block_effect", "emb_cos_block_effect", "qk_block_effect"]),
    ("embedding Gram EEᵀ: class means", ["emb_same_word", "emb_same_topic", "emb_diff_topic"]),
    ("QK circuit: class means", ["qk_same_word", "qk_same_topic", "qk_diff_topic"]),
    ("attention class means (×n/100: uniform reads 0.01)", ["attn_same_token", "attn_same_topic", "attn_diff_topic"]),
    ("distance from initialisation", [f"dist_{g}" for g in STAGE_GROUPS]),
    ("gradient norm", [f"grad_{g}" for g in STAGE_GROUPS]),
    ("distance of W^V from the closed-form optimum", ["dist_optimum"]),
]


def page(cfg: TopicConfig, summary: dict, records: list[dict]) -> dict:
    marks = []
    for group in STAGE_GROUPS:
        step = final_value(summary, f"onset_step_{group}")
        if step is not None:
            marks.append({"label": f"{group} starts to move", "step": step})
    for name in CONTRAST_REACHES:
        step = final_value(summary, name)
        if step is not None:
            label = "W^V contrast at half its final value" if name.startswith("wv") else "attention contrast at a tenth"
            marks.append({"label": label, "step": step})
    attention_refs = [{"label": "uniform attention", "value": 0.01}]
    curves = [
        {"title": title, "series": series, "refs": attention_refs if title.startswith("attention") else []}
        for title, series in CURVES
    ]
    blocks = {"groups": "word_topic", "ticks": "words", "tick": "word {}", "group": "topic {}"}
    tokens = {"groups": "attention_topic", "ticks": "attention_tokens", "tick": "word {}", "group": "topic {}"}
    views = [
        {"kind": "heatmap", "matrix": "ov", "title": "W^V: the OV circuit over words, grouped by topic"} | blocks,
        {"kind": "heatmap", "matrix": "qk", "title": "QK circuit W_E W_Q W_Kᵀ W_Eᵀ, double-centred"} | blocks,
        {"kind": "heatmap", "matrix": "emb_gram", "title": "embedding Gram EEᵀ"} | blocks,
        {
            "kind": "heatmap",
            "matrix": "attention",
            "title": "attention ×n/100 in dev document {}: query (row) → key, tokens grouped by topic",
            "sequential": True,
        }
        | tokens,
        {
            "kind": "values",
            "title": "at this step",
            "metrics": ["loss_dev", "wv_block_effect", "wv_same_topic", "wv_diff_topic", "attn_same_topic"]
            + ["attn_diff_topic"],
        },
    ]
    return {"curves": curves, "marks": marks, "views": views, "theory_prefix": ""}
