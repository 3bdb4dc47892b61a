"""report.html: one page per run, seed group and sweep that opens from disk with no network. Everything it shows is
inlined: the script and style (``assets/``) and the data, a gzip-compressed JSON document in base64 that the page
unpacks with the browser's own DecompressionStream. A Content-Security-Policy in the page forbids every request.

A run's page shows its claims (reproduced results, then sanity checks), every scalar metric of metrics.jsonl over
the probe steps on a log axis (with the theory's prediction of the same name as a reference line, and the marks its
family gives: stage onsets, stage boundaries, phase steps), and the matrices of matrices.safetensors under one step
slider. A group's page shows the members' mean with a 95% band of the mean and their range, and a member picker; a
sweep's page (``toyformer.sweep.page``) the phase diagrams, each cell a link to its group's page.

What a family shows is its ``views`` function (``Task.views``): ``(config, summary, records) → spec`` with
- ``curves``: panels ``{"title", "series": [metric names], "refs": [{"label", "value"}]}``; metrics no panel names
  get panels of their own, grouped by their first word;
- ``marks``: ``[{"label", "step"}]``, vertical lines on every curve;
- ``views``: what the slider moves: ``heatmap`` (``matrix``: a stored matrix, or ``metric``: a nested metric such
  as ``rpe``; a 3-d matrix is one heat-map per leading index; ``groups``/``ticks``: stored label arrays that draw
  block lines and name rows and columns on hover), ``bars`` (a metric that maps names to numbers) and ``values``
  (metrics read at the step).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toyformer.claims import SUMMARY_KEYS
from toyformer.runs import Run, atomic_write

PAGE = "report.html"
ASSETS = Path(__file__).parent / "assets"
# a group page carries its members' matrices up to this many bytes (before compression), and the first member's
# whatever their size; the other members' pages are a click away
GROUP_MATRIX_BYTES = 3_000_000
AUTO_PANEL = 6  # series per panel made for metrics no family panel names

Views = Callable[[dict, list[dict]], dict]  # (summary, records) → a family's view spec


def reference_lines(summary: dict, labels: dict[str, str]) -> list[dict]:
    """A line per reference loss ``loss_ref_<name>`` the summary holds, labelled from ``labels`` (name → label)."""
    values = {name: final_value(summary, f"loss_ref_{name}") for name in labels}
    return [{"label": labels[n], "value": v} for n, v in values.items() if v is not None]


def final_value(summary: dict, key: str) -> float | None:
    """A final metric of a run's summary, or the members' mean in a group's; None when missing or not a number."""
    value = summary.get("final", {}).get(key)
    if isinstance(value, dict):
        value = value.get("mean")
    return _number(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def scalars(record: dict, prefix: str = "") -> dict[str, float | None]:
    """The numbers of a metrics record, nested dicts read as dotted names (``subset_share.110``); lists are left to
    the matrix views, text to the ``values`` view."""
    out: dict[str, float | None] = {}
    for key, value in record.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            out |= scalars(value, name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool) and name != "step":
            out[name] = _number(value)
    return out


def clean(value: Any) -> Any:
    """JSON that a browser parses: non-finite numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def encode(array: np.ndarray) -> dict:
    """An array as the page reads it: shape, dtype (f2, f4, i4, u1) and its little-endian bytes in base64."""
    kinds = {np.float16: "f2", np.float32: "f4", np.int32: "i4", np.bool_: "u1"}
    x = np.asarray(array)
    kind = next((k for t, k in kinds.items() if x.dtype == t), None)
    if kind is None:
        x, kind = x.astype(np.float32), "f4"
    data = np.ascontiguousarray(x.astype(x.dtype.newbyteorder("<"))).tobytes()
    return {"shape": list(x.shape), "dtype": kind, "data": base64.b64encode(data).decode()}


# -- one run --------------------------------------------------------------------------------------------------------


def claim_rows(summary: dict) -> list[dict]:
    """The claims table: reproduced results (and nulls) first, then the sanity checks, as summary.json has them."""
    rows = []
    for key in SUMMARY_KEYS:
        for c in summary.get(key, []):
            row = {"name": c["name"], "kind": c.get("kind"), "sanity": key == "sanity_checks", "ok": bool(c["ok"])}
            if "share" in c:  # a group of seeds
                row |= {"share": c["share"], "min_share": c["min_share"], "members": c.get("measured", [])}
            else:
                row |= {"measured": c.get("measured"), "against": c.get("against", ""), "reference": c.get("reference")}
            rows.append(row | {"expected": c.get("expected", "")})
    return rows


def _series(records: list[dict]) -> tuple[list[int], dict[str, list[float | None]]]:
    steps = [int(r["step"]) for r in records]
    flat = [scalars(r) for r in records]
    names = list(dict.fromkeys(k for f in flat for k in f))
    return steps, {n: [f.get(n) for f in flat] for n in names}


def _metric_values(records: list[dict], spec: dict) -> dict[str, list]:
    """Per step, the metrics the views read whole (nested dicts and lists), and the text metrics."""
    wanted = {v["metric"] for v in spec["views"] if "metric" in v}
    wanted |= {m for v in spec["views"] if v["kind"] == "values" for m in v["metrics"]}
    return {name: [r.get(name) for r in records] for name in sorted(wanted) if any(name in r for r in records)}


def _matrices(run: Run, steps: list[int], limit: float = math.inf) -> tuple[dict[str, Any] | None, int]:
    """name → {"static": array} (the same at every step: labels) or {"steps": [array or None per probe step]}, and
    the bytes they take; None instead of the arrays when they take more than ``limit``."""
    stored = run.matrices()
    size = sum(a.nbytes for arrays in stored.values() for a in arrays.values())
    if size > limit:
        return None, size
    names = list(dict.fromkeys(n for arrays in stored.values() for n in arrays))
    out = {}
    for name in names:
        per_step = [stored.get(s, {}).get(name) for s in steps]
        present = [a for a in per_step if a is not None]
        first = present[0]
        if len(present) == len(per_step) and all(a.shape == first.shape and np.array_equal(a, first) for a in present):
            out[name] = {"static": encode(first)}
        else:
            out[name] = {"steps": [None if a is None else encode(a) for a in per_step]}
    return out, size


def finish_spec(spec: dict, names: list[str], theory: dict, matrices: set[str], metrics: set[str]) -> dict:
    """The family's spec, kept to what the data holds: series that exist, a reference line for each series whose
    theory prediction has the same name, panels for the metrics no panel names, views with their data."""
    curves, named = [], set()
    for panel in spec.get("curves", []):
        series = [s for s in panel["series"] if s in names]
        named |= set(series)
        refs = list(panel.get("refs", []))
        refs += [{"label": f"theory: {s}", "value": theory[s]} for s in series if _number(theory.get(s)) is not None]
        if series:
            curves.append({"title": panel["title"], "series": series, "refs": refs})
    rest: dict[str, list[str]] = {}
    for name in names:
        if name not in named:
            rest.setdefault(name.replace(".", "_").split("_")[0], []).append(name)
    for head, series in rest.items():
        for i in range(0, len(series), AUTO_PANEL):
            refs = [{"label": f"theory: {s}", "value": theory[s]} for s in series if _number(theory.get(s)) is not None]
            curves.append({"title": f"{head}…", "series": series[i : i + AUTO_PANEL], "refs": refs})
    views = []
    for view in spec.get("views", []):
        if view["kind"] == "heatmap" and not (view.get("matrix") in matrices or view.get("metric") in metrics):
            continue
        if view["kind"] == "bars" and view["metric"] not in metrics:
            continue
        views.append(view)
    marks = [m for m in spec.get("marks", []) if _number(m.get("step")) is not None]
    return {"curves": curves, "marks": marks, "views": views}


def run_payload(run: Run, views: Views, summary: dict | None = None) -> dict:
    """Everything a run's page shows, as JSON."""
    summary = summary if summary is not None else run.summary()
    records = run.metrics()
    steps, series = _series(records)
    matrices, _ = _matrices(run, steps)
    spec = views(summary, records)
    metrics = _metric_values(records, spec)
    spec = finish_spec(spec, list(series), summary.get("theory", {}), set(matrices), set(metrics))
    meta = _meta(run)
    return clean(
        {
            "kind": "run",
            "title": summary.get("name", run.path.name),
            "subtitle": f"seed {summary.get('seed')} · {summary.get('steps', steps[-1] if steps else 0)} steps"
            + (f" · {meta['device']}" if meta.get("device") else ""),
            "claims": claim_rows(summary),
            "notes": _notes(summary),
            "steps": steps,
            "scalars": series,
            "metrics": metrics,
            "matrices": matrices,
            **spec,
            "figures": sorted(p.name for p in (run.path / "figures").glob("*.png")),
            "up": _up(run.path),
        }
    )


def _meta(run: Run) -> dict:
    try:
        return run.meta()
    except Exception:  # a page is still worth writing for a run whose meta.json is damaged
        return {}


def _notes(summary: dict) -> list[str]:
    notes = []
    for key, text in (("diverged_at_step", "diverged at step {}"), ("stopped_at_step", "stopped at step {}")):
        if key in summary:
            notes.append(text.format(summary[key]))
    return notes


def _up(path: Path) -> dict | None:
    """The page one level up (a run's group, a group's sweep), as a relative link."""
    for up, href, label in ((path.parent, "../" + PAGE, "group"), (path.parent.parent, "../../" + PAGE, "sweep")):
        if (up / "group.json").is_file() or (up / "sweep.json").is_file():
            return {"href": href, "label": "sweep" if (up / "sweep.json").is_file() else label}
    return None


def write_run_page(run: Run, views: Views, summary: dict | None = None) -> Path:
    """report.html of a run (its matrices written first, so the page shows every probe step)."""
    run.flush_matrices()
    payload = run_payload(run, views, summary)
    path = run.path / PAGE
    atomic_write(path, document(payload))
    return path


# -- a group of seeds -----------------------------------------------------------------------------------------------


def group_payload(out: Path, summary: dict, runs: list[Run], views: Callable[[dict, list[dict]], dict]) -> dict:
    from toyformer.train.figures import band  # matplotlib comes with the group figures' module

    members = []
    all_records = [r.metrics() for r in runs]
    steps = sorted({int(rec["step"]) for records in all_records for rec in records})
    where = {s: i for i, s in enumerate(steps)}
    budget = GROUP_MATRIX_BYTES
    spec = views(summary, all_records[0] if all_records else [])
    names: list[str] = []
    for run, records in zip(runs, all_records, strict=True):
        own_steps, series = _series(records)
        names += [n for n in series if n not in names]
        aligned = {}
        for name, values in series.items():
            row: list[float | None] = [None] * len(steps)
            for s, v in zip(own_steps, values, strict=True):
                row[where[s]] = v
            aligned[name] = row
        # the first member's matrices whatever their size (the page shows one mechanism), then while they fit
        matrices, size = _matrices(run, steps, budget if members else math.inf)
        budget -= size if matrices is not None else 0
        member_summary = run.summary() if run.complete else {}
        members.append(
            {
                "name": run.path.name,
                "href": f"{run.path.name}/{PAGE}",
                "scalars": aligned,
                "metrics": _metric_values([_at(records, s) for s in steps], spec),
                "matrices": matrices,
                "claims": claim_rows(member_summary),
                "notes": _notes(member_summary),
            }
        )
    bands = {}
    for name in names:
        values = np.array(
            [[np.nan if v is None else v for v in m["scalars"].get(name, [None] * len(steps))] for m in members],
            dtype=float,
        )
        bands[name] = {k: v.tolist() for k, v in band(values).items()}
    matrix_names = {n for m in members if m["matrices"] for n in m["matrices"]}
    metric_names = {n for m in members for n in m["metrics"]}
    spec = finish_spec(spec, names, summary.get("theory", {}), matrix_names, metric_names)
    return clean(
        {
            "kind": "group",
            "title": summary.get("name", out.name),
            "subtitle": f"{len(runs)} seeds ({', '.join(str(s) for s in summary.get('seeds', []))})",
            "claims": claim_rows(summary),
            "notes": [f"diverged: seeds {summary['diverged']}"] if summary.get("diverged") else [],
            "steps": steps,
            "bands": bands,
            "members": members,
            **spec,
            "figures": sorted(p.name for p in (out / "figures").glob("*.png")),
            "up": _up(out),
        }
    )


def _at(records: list[dict], step: int) -> dict:
    return next((r for r in records if r["step"] == step), {})


def write_group_page(out: Path, summary: dict, runs: list[Run], views: Views) -> Path:
    payload = group_payload(Path(out), summary, runs, views)
    path = Path(out) / PAGE
    atomic_write(path, document(payload))
    return path


# -- the document ---------------------------------------------------------------------------------------------------

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def pack(payload: dict) -> str:
    """The payload as the page carries it: JSON, gzip (no timestamp: the same data gives the same page), base64."""
    text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    return base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()


def unpack(text: str) -> dict:
    """The payload of a page's data (for tests and scripts that read a page)."""
    return json.loads(gzip.decompress(base64.b64decode(text)))


def page_data(path: Path) -> dict:
    """The payload of a report.html."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script id="data" type="application/octet-stream">') + len(
        '<script id="data" type="application/octet-stream">'
    )
    return unpack(text[start : text.index("</script>", start)])


def document(payload: dict) -> str:
    title = html.escape(f"{payload['title']}: {payload['kind']} report")
    style = (ASSETS / "page.css").read_text(encoding="utf-8")
    script = (ASSETS / "page.js").read_text(encoding="utf-8")
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{style}</style>\n</head>\n<body>\n"
        f'<main id="app"><p class="loading">Loading {title}…</p></main>\n'
        f'<script id="data" type="application/octet-stream">{pack(payload)}</script>\n'
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )
