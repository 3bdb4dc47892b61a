"""The ``toyformer`` command: recipes, run, theory, report, demo.

Bad input (a config error, an unreadable file) prints one line on stderr and exits with code 2. Commands import the
modules they use inside their bodies, so that `toyformer --help` and `toyformer recipes` start without torch.
"""

from __future__ import annotations

import json
import math
import re
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from toyformer import config as config_mod
from toyformer import tasks
from toyformer.config import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Data with known structure, small transformers, and the theory of what they learn.",
)
theory_app = typer.Typer(no_args_is_help=True, help="Print the theory's predictions for a setting.")
app.add_typer(theory_app, name="theory")
corpus_app = typer.Typer(no_args_is_help=True, help="Real text: fit and inspect the topics of a corpus.")
app.add_typer(corpus_app, name="corpus")
console = Console(stderr=True)
out_console = Console()

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set train.steps=200")]


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def parse_seeds(text: str) -> list[int]:
    """'0-4' → [0, 1, 2, 3, 4]; '1,3,7' → [1, 3, 7]."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            seeds = range(lo, hi + 1)
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: write a range like 0-4 or a list like 0,2,5")
    if len(seeds) > config_mod.MAX_SEEDS:
        raise ConfigError(f"--seeds {text!r}: {len(seeds):,} seeds; a group holds at most {config_mod.MAX_SEEDS:,}")
    return list(seeds)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _train_all(cfg, seeds: list[int] | None, out: Path, sequential: bool = False) -> Path:
    """One run, or a group of runs when seeds are given (stacked in one process unless ``sequential``); returns the
    directory holding summary.json."""
    from toyformer.train.seeds import run_seeds

    task = tasks.task_of(cfg)
    if not seeds:
        return _train(cfg, out)
    if sequential:
        return run_seeds(cfg, task, seeds, out, sequential=True, progress=_run_progress)
    with _progress() as progress:
        return run_seeds(cfg, task, seeds, out, on_step=_ensemble_progress(progress, cfg, len(seeds)))


def _ensemble_progress(progress: Progress, cfg, members: int):
    bar = progress.add_task(f"{cfg.name} × {members} seeds", total=cfg.train.steps + 1, info="")

    def on_step(step: int, records: list[dict]) -> None:
        info = None
        if records:
            losses = [r["loss_train"] for r in records]
            info = f"loss {sum(losses) / len(losses):.4f} (mean of {len(records)} running)"
        progress.update(bar, completed=step + 1, **({"info": info} if info else {}))

    return on_step


@contextmanager
def _run_progress(cfg):
    """A progress bar for one run; yields its on_step(step, record)."""
    with _progress() as progress:
        bar = progress.add_task(f"{cfg.name} seed {cfg.seed}", total=cfg.train.steps + 1, info="")

        def on_step(step: int, record: dict | None) -> None:
            info = None
            if record is not None:
                held_out = record.get("loss_dev", record.get("loss_val", float("nan")))
                info = f"loss {record['loss_train']:.4f}  held-out {held_out:.4f}"
                if "a" in record:
                    info += f"  a {record['a']:.2f}  S {{{record['selected_subset']}}}"
            progress.update(bar, completed=step + 1, **({"info": info} if info else {}))

        yield on_step


def _train(cfg, out: Path | None, resume=None) -> Path:
    from toyformer.train.loop import train

    experiment = tasks.task_of(cfg).build(cfg)  # every error before a directory or a bar
    with _run_progress(cfg) as on_step:
        return train(experiment, out=out, on_step=on_step, resume=resume).path


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}" if isinstance(x, int | float) else str(x)


def _print_checks(summary: dict, title: str) -> bool:
    """One row per claim: the measured value and what it was held against; reproduced results first, then the
    sanity checks (bounds that hold at initialisation too) under their own rule."""
    table = Table(title=title, title_justify="left")
    for col in ("claim", "held", "measured", "against"):
        table.add_column(col, overflow="fold")
    results, sanity = summary.get("checks", []), summary.get("sanity_checks", [])
    for prefix, checks in (("", results), ("[dim]sanity:[/] ", sanity)):
        if prefix and checks:
            table.add_section()
        for c in checks:
            if "share" in c:  # a group of seeds
                measured, against = f"{c['share']:.0%} of seeds", f">= {c['min_share']:.0%} of seeds"
            else:
                measured, against = _fmt(c["measured"]), c["against"]
            table.add_row(prefix + c["name"], "[green]yes[/]" if c["ok"] else "[red]NO[/]", measured, against)
    console.print(table)
    return all(c["ok"] for c in results + sanity)


@app.command()
def recipes(show: Annotated[str | None, typer.Option(help="print one recipe's resolved config")] = None) -> None:
    """List the named experiments."""
    try:
        if show:
            cfg = tasks.load(show)
            out_console.print(cfg.dump(), highlight=False, markup=False)
            return
        table = Table(title="recipes")
        table.add_column("name")
        table.add_column("description")
        for name in config_mod.recipe_names():
            table.add_row(name, tasks.load(name).description)
        out_console.print(table)
    except ConfigError as e:
        fail(str(e))


@app.command()
def run(
    recipe: Annotated[str | None, typer.Argument(help="a name from `toyformer recipes` or a TOML file")] = None,
    set_: SetOpt = None,
    seed: Annotated[int | None, typer.Option(help="the run seed")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="several seeds, e.g. 0-63: trained together as one stacked ensemble")
    ] = None,
    sequential: Annotated[bool, typer.Option(help="with --seeds: one seed after another instead of stacked")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    out: Annotated[Path | None, typer.Option(help="the run directory (default: runs/NAME-sSEED-TIME)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run directory")] = None,
    log: Annotated[
        list[str] | None,
        typer.Option(help="also write the run to a tracker: tensorboard or wandb (offline unless WANDB_MODE says)"),
    ] = None,
) -> None:
    """Train a recipe; prints the run directory as the last line."""
    from toyformer import trackers
    from toyformer.runs import Run, default_dir

    try:
        loggers = trackers.check(list(log or []))  # a missing extra is refused before anything trains
        if resume is not None:
            if recipe or set_ or seed is not None or seeds:
                raise ConfigError("--resume takes only the run directory: the config is read from it")
            path = _resume(resume)
        else:
            if recipe is None:
                raise ConfigError("give a RECIPE (see `toyformer recipes`) or --resume RUN_DIR")
            if seed is not None and seeds:
                raise ConfigError("give --seed N (one run) or --seeds LIST (a group), not both")
            overrides = list(set_ or []) + ([f"device={device}"] if device else [])
            cfg = tasks.load(recipe, overrides, seed)
            if not tasks.task_of(cfg).trains:
                raise ConfigError(f"{recipe}: task {cfg.task!r} trains nothing; see `toyformer {cfg.task} --help`")
            # --seed N runs seed N alone, even for a recipe that lists seeds
            seed_list = parse_seeds(seeds) if seeds else (None if seed is not None else cfg.seeds)
            out = out or default_dir(cfg, "seeds" if seed_list else f"s{cfg.seed}")
            try:
                path = _train_all(cfg, seed_list, out, sequential)
            except KeyboardInterrupt:
                console.print(f"interrupted: continue with `toyformer run --resume {out}`", highlight=False)
                raise typer.Exit(130) from None
        summary = Run(path).summary()
        _print_checks(summary, f"{summary['name']}: claims")
        for folder in trackers.export(path, loggers):
            console.print(f"{folder.name}: {folder}", highlight=False, soft_wrap=True)
        console.print(f"report: {path / 'report.html'}", highlight=False, soft_wrap=True)
    except ConfigError as e:
        fail(str(e))
    out_console.print(str(path), highlight=False, soft_wrap=True)


def _resume(path: Path) -> Path:
    from toyformer.runs import Run, safe_load
    from toyformer.train.ensemble import STATE
    from toyformer.train.seeds import GROUP, Group, resume_seeds

    if (path / GROUP).is_file():
        group = Group.read(path)
        cfg = tasks.validate(group.config)
        task = tasks.task_of(cfg)
        if not group.stacked:
            return resume_seeds(path, group, cfg, task, progress=_run_progress)
        if (path / STATE).is_file():
            safe_load(path / STATE)  # a bad state file is refused before any progress is printed
        with _progress() as progress:
            return resume_seeds(path, group, cfg, task, _ensemble_progress(progress, cfg, len(group.seeds)))
    run = Run.open(path)
    if run.complete:
        raise ConfigError(f"{path}: the run is complete; nothing to resume")
    run.load_checkpoint()  # a bad checkpoint is refused before any progress is printed
    return _train(tasks.run_config(run), None, resume=run)


@theory_app.command("topic")
def theory_topic(
    recipe: Annotated[str, typer.Option(help="the recipe whose setting to use")] = "topic/s2-squared",
    set_: SetOpt = None,
    samples: Annotated[int | None, typer.Option(help="simulated documents for the finite-N optimum")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Closed-form optima of the topic experiments (docs/topic-structure.md §5): regime B (and A, tied) for the actual
    pipeline and the population limit B/a."""
    from toyformer.topic.theory import predictions

    try:
        overrides = list(set_ or []) + ([f"theory.samples={samples}"] if samples else [])
        cfg = tasks.load(recipe, overrides)
    except ConfigError as e:
        fail(str(e))
    values, _ = predictions(cfg)
    values["wv_contrast"] = values["wv_same_topic"] - values["wv_diff_topic"]
    if as_json:
        out_console.print(json.dumps(values, indent=2), highlight=False)
        return
    table = Table(
        title=f"topic theory: {cfg.name} (T={cfg.data.num_topics}, α={cfg.data.alpha}, "
        f"N∈[{cfg.data.doc_len_min},{cfg.data.doc_len_max}], p_c={cfg.masking.keep_prob})"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in values.items():
        table.add_row(k, f"{v:.5f}")
    out_console.print(table)


def _offsets(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        values = ()
    if not values or values[0] < 1:
        raise ConfigError(f"{flag} {text!r}: write positive offsets separated by commas, e.g. {flag} 1,2")
    return values


@theory_app.command("ngram")
def theory_ngram(
    d: Annotated[int, typer.Option("--d", help="vocabulary size")] = 3,
    parents: Annotated[str, typer.Option(help="parent offsets, e.g. 1,2 or 1,3")] = "1,2",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of each kernel row")] = 0.1,
    heads: Annotated[int, typer.Option(help="H, heads of the copier")] = 3,
    degree: Annotated[int, typer.Option(help="D, the selector's largest subset")] = 2,
    layout: Annotated[str, typer.Option(help="code (head h copies offset h) or paper (window 1..M)")] = "code",
    window: Annotated[int | None, typer.Option(help="M, the paper layout's window")] = None,
    kernels: Annotated[int, typer.Option(help="kernels drawn from the prior for the expectation")] = 2000,
    seed: Annotated[int, typer.Option(help="seed of the kernel draws")] = 0,
    length: Annotated[int, typer.Option(help="L, for the reference losses")] = 100,
    sequences: Annotated[int, typer.Option(help="simulated sequences for the reference losses (0: skip)")] = 4000,
    a: Annotated[float, typer.Option("--a", help="the GIH's a for its reference loss")] = 11.35,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The subset table of the modified χ² mutual information, the predicted S* and the reference losses
    (docs/induction-heads.md §5)."""
    from toyformer.induction.chains import sample_batch
    from toyformer.induction.config import InductionConfig, candidate_subsets
    from toyformer.induction.predictors import best_gih_a, reference_losses
    from toyformer.induction.theory import predict_subset
    from toyformer.random import generator

    try:
        raw = {
            "task": "induction",
            "data": {"d": d, "parents": list(_offsets(parents, "--parents")), "alpha": alpha, "length": length},
            "model": {"heads": heads, "degree": degree, "layout": layout, "window": window},
            "theory": {"kernels": kernels},
        }
        if sequences < 0 or not math.isfinite(a):
            raise ConfigError(f"--sequences must be >= 0 and --a a finite number, got {sequences} and {a}")
        try:
            cfg = config_mod.validate_as(InductionConfig, raw)  # the rules of a recipe with this setting
        except ConfigError as e:
            raise ConfigError(_as_flags(str(e))) from None
    except ConfigError as e:
        fail(str(e))
    data, model = cfg.data, cfg.model
    pa = tuple(data.parents)
    prediction = predict_subset(d, pa, alpha, heads, degree, model.layout, model.window, kernels, seed)
    out = prediction.summary() | {"candidates": len(candidate_subsets(model.layout, heads, degree, model.window))}
    if sequences:
        chains = sample_batch(sequences, d, pa, alpha, length, generator(seed, "theory-sequences"))
        best = tuple(int(x) for x in prediction.predicted.split(","))
        out["reference_losses"] = reference_losses(chains.tokens, chains.kernels, pa, best, d, alpha, a)
        out["gih_best_a_nll"], out["gih_best_loss_nll"] = best_gih_a(chains.tokens, best, d)
    if as_json:
        out_console.print(json.dumps(out, indent=2), highlight=False)
        return
    table = Table(
        title=f"n-gram theory: d={d}, parents {{{','.join(map(str, pa))}}}, α={alpha}, H={heads}, "
        f"D={degree}, {layout} layout ({kernels} kernels)",
        title_justify="left",
    )
    for col in ("subset S", "modified χ² Ĩ", "± s.e.", "standard χ²", "code-ce"):
        table.add_column(col, justify="right")
    for name in sorted(out["mi_modified"], key=lambda k: -out["mi_modified"][k]):
        mark = " ← S*" if name == prediction.predicted else ""
        table.add_row(
            f"{{{name}}}{mark}",
            f"{out['mi_modified'][name]:.4f}",
            f"{out['mi_modified_se'][name]:.4f}",
            f"{out['mi_standard'][name]:.4f}",
            f"{out['mi_code_ce'][name]:.4f}",
        )
    out_console.print(table)
    out_console.print(
        f"predicted S* = {{{prediction.predicted}}}, margin to the runner-up {prediction.margin:.1%} "
        f"(± {prediction.margin_se:.4f} absolute)",
        highlight=False,
    )
    if sequences:
        refs = Table(
            title=f"reference losses on {sequences} simulated sequences, L={length}, S = S*", title_justify="left"
        )
        for col in ("predictor", "nll", "code-ce"):
            refs.add_column(col, justify="right")
        for name, v in out["reference_losses"].items():
            label = {"gih": f"gih (a={a:g})", "gih_inf": "gih (a→∞)"}.get(name, name)
            refs.add_row(label, f"{v['nll']:.4f}", f"{v['code-ce']:.4f}")
        out_console.print(refs)
        out_console.print(
            f"nll-optimal a of the GIH: {out['gih_best_a_nll']:.2f} (nll {out['gih_best_loss_nll']:.4f})",
            highlight=False,
        )


# `theory ngram`'s flags for the config keys its errors name
FLAGS = {
    "data.d": "--d",
    "data.parents": "--parents",
    "data.alpha": "--alpha",
    "data.length": "--length",
    "model.heads": "--heads",
    "model.degree": "--degree",
    "model.layout": "--layout",
    "model.window": "--window",
    "theory.kernels": "--kernels",
}


def _as_flags(message: str) -> str:
    for key, flag in FLAGS.items():
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w])", flag, message)
    return message


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory, a seed group or a sweep directory")],
) -> None:
    """Rebuild the figures and report.html of a finished run (from its checkpoint, metrics and matrices), of a seed
    group (the group's and every member's) or of a sweep (its results, phase diagrams and page, and every cell's).
    Prints the pages written; report.html opens in a browser with no network."""
    from toyformer.sweep.local import SWEEP
    from toyformer.train.seeds import GROUP

    try:
        if (run_dir / SWEEP).is_file():
            pages = _report_sweep(run_dir)
        elif (run_dir / GROUP).is_file():
            pages = _report_group(run_dir)
        else:
            pages = _report_run(run_dir)
    except ConfigError as e:
        fail(str(e))
    for page in pages:
        out_console.print(str(page), highlight=False, soft_wrap=True)


def _report_run(path: Path, figures: bool = True) -> list[Path]:
    """A run's figures (when asked) and page; everything is read and checked before anything is written."""
    from toyformer.report.page import write_run_page
    from toyformer.runs import Run

    run = Run.open(path)
    if not run.complete:
        raise ConfigError(f"{path}: the run is not complete (no summary.json); finish it with --resume first")
    summary = run.summary()
    run.matrices()  # a damaged matrix file is refused before anything is written
    cfg = tasks.run_config(run)
    task = tasks.task_of(cfg)
    if not task.trains:
        raise ConfigError(f"{path}: task {cfg.task!r} trains nothing; report rebuilds what a training run wrote")
    written = []
    if figures:
        state = run.load_checkpoint()
        if state is None:
            raise ConfigError(f"{path}: no checkpoint to rebuild the figures from")
        experiment = task.build(cfg)
        experiment.model.load_state_dict(state["model"])
        written += [run.path / "figures" / name for name in experiment.write_figures(run)]
    return [*written, write_run_page(run, task.page_views(cfg), summary)]


def _report_group(path: Path) -> list[Path]:
    from toyformer.report.page import write_group_page
    from toyformer.runs import Run
    from toyformer.train.figures import write_group_figures
    from toyformer.train.seeds import Group

    group = Group.read(path)
    if not (path / "summary.json").is_file():
        raise ConfigError(f"{path}: the group is not complete (no summary.json); finish it with --resume first")
    cfg = tasks.validate(group.config)
    task = tasks.task_of(cfg)
    runs = [Run.open(path / f"seed-{seed}") for seed in group.seeds]
    summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    # members' pages only: their figures cost a model each (`toyformer report GROUP/seed-N` draws them)
    pages = [p for run in runs for p in _report_run(run.path, figures=False)]
    figures = write_group_figures(path, cfg, runs, task.group_panels)
    return [*pages, *map(Path, figures), write_group_page(path, summary, runs, task.page_views(cfg))]


def _report_sweep(path: Path) -> list[Path]:
    from toyformer.sweep.local import cell_dir, reopen, status

    spec, grid = reopen(path)
    pages = [p for cell in grid if status(path, cell) == "done" for p in _report_group(cell_dir(path, cell))]
    _sweep_results(path)
    return [*pages, *sorted((path / "figures").glob("phase-*.png")), path / "report.html"]


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a finished induction run directory")],
    set_: SetOpt = None,
    sequences: Annotated[int, typer.Option(help="fresh chains to evaluate on")] = 2000,
    seed: Annotated[int | None, typer.Option(help="seed of the fresh chains (default: the run's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Evaluate a trained induction model under shift: --set data.length=200 --set data.alpha=0.3 --set data.d=4."""
    from toyformer.induction.config import InductionConfig
    from toyformer.induction.experiment import evaluate
    from toyformer.runs import Run

    try:
        if sequences < 1:
            raise ConfigError("--sequences must be >= 1")
        run = Run.open(run_dir)
        cfg = tasks.run_config(run)
        if not isinstance(cfg, InductionConfig):
            raise ConfigError(f"{run_dir}: eval is for induction runs (this run's task is {cfg.task!r})")
        result = evaluate(run, cfg, list(set_ or []), sequences, seed)
    except ConfigError as e:
        fail(str(e))
    if as_json:
        out_console.print(json.dumps(result, indent=2), highlight=False)
        return
    data = result["data"]
    table = Table(
        title=f"{run_dir}: d={data['d']}, parents {data['parents']}, α={data['alpha']}, L={data['length']}, "
        f"{result['sequences']} chains ({result['loss']})",
        title_justify="left",
    )
    table.add_column("predictor")
    table.add_column(result["loss"], justify="right")
    table.add_row("trained model", f"{result['loss_val']:.4f}")
    table.add_row(f"GIH at its S {{{result['selected_subset']}}}, a={result['a']:.2f}", f"{result['loss_ref_gih']:.4f}")
    table.add_row(f"GIH at the theory's S*, a*={result['gih_theory_a']:.2f}", f"{result['loss_ref_gih_theory']:.4f}")
    for name in ("uniform", "unigram", "bayes", "oracle"):
        table.add_row(name, f"{result['loss_ref_' + name]:.4f}")
    out_console.print(table)
    out_console.print(f"total variation to the GIH: {result['tv_to_gih']:.4f}", highlight=False)


def _stage_bars(progress: Progress):
    """The progress callback of long text work: each stage (description, total) gets its own bar."""

    def start(description: str, total: int | None):
        task = progress.add_task(description, total=total, info="")
        return lambda n: progress.advance(task, n)

    return start


CorpusOpt = Annotated[
    str, typer.Option(help="wiki-vital, a folder of .txt files, a .jsonl file, a saved datasets folder or hf:NAME")
]
LangOpt = Annotated[str, typer.Option(help="language of wiki-vital and of the stop words: en, fr, es")]


def _text_config(cls, raw: dict, set_: list[str] | None):
    return config_mod.validate_as(cls, config_mod.apply_overrides(raw, list(set_ or [])))


@corpus_app.command("topics")
def corpus_topics_cmd(
    corpus: CorpusOpt = "wiki-vital",
    lang: LangOpt = "en",
    topics: Annotated[int | None, typer.Option(help="number of LDA topics (default 50)")] = None,
    passes: Annotated[int | None, typer.Option(help="LDA passes over the corpus (default 10)")] = None,
    weighting: Annotated[str | None, typer.Option(help="counts or tfidf (the paper's)")] = None,
    set_: SetOpt = None,
    refit: Annotated[bool, typer.Option(help="fit again even if the topics are cached")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Fit LDA topics on a corpus (cached) and print them; the cache folder is the last line.
    More settings: --set vocab.size=20000 --set topics.rule=posterior --set corpus.max_docs=5000 …"""
    from toyformer.text.config import TopicsFit
    from toyformer.text.topics import corpus_topics

    given = {"num_topics": topics, "passes": passes, "weighting": weighting}
    raw = {"corpus": {"source": corpus, "lang": lang}, "topics": {k: v for k, v in given.items() if v is not None}}
    try:
        cfg = _text_config(TopicsFit, raw, set_)
        with _progress() as progress:
            fitted, path, cached = corpus_topics(cfg.corpus, cfg.vocab, cfg.topics, _stage_bars(progress), refit)
    except ConfigError as e:
        fail(str(e))
    assignment, labels = fitted.assignment(), fitted.label_assignment()
    info = {
        "cache": str(path),
        "cached": cached,
        "documents": fitted.vocab.docs,
        "vocabulary": len(fitted.vocab),
        "topics": len(fitted.word_topic),
        "topics_per_doc": fitted.topics_per_doc,
        "words_with_topics": float(assignment.any(1).mean()),
        "topics_per_word": float(assignment.sum(1).mean()),
        "labels": fitted.labels,
        "words_with_labels": float(labels.any(1).mean()) if labels.size else 0.0,
        "topic_label_nmi": fitted.topic_label_nmi(),
        "top_words": [fitted.top_words(t) for t in range(len(fitted.word_topic))],
    }
    if as_json:
        out_console.print(json.dumps(info, indent=1, ensure_ascii=False), highlight=False, soft_wrap=True)
    else:
        table = Table(
            title=f"{corpus}: {info['topics']} topics ({'cached' if cached else 'fitted'})", title_justify="left"
        )
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key in (
            "documents",
            "vocabulary",
            "topics_per_doc",
            "words_with_topics",
            "topics_per_word",
            "words_with_labels",
            "topic_label_nmi",
        ):
            table.add_row(key, _fmt(info[key]))
        out_console.print(table)
        for t, words in enumerate(info["top_words"][:10]):
            out_console.print(f"topic {t:3d}: {' '.join(words)}", highlight=False)
    out_console.print(str(path), highlight=False, soft_wrap=True)


@app.command()
def analyze(
    model_dir: Annotated[Path, typer.Argument(help="a local HuggingFace BERT-family model folder")],
    corpus: CorpusOpt = "wiki-vital",
    lang: LangOpt = "en",
    docs: Annotated[int, typer.Option(help="documents whose attention is measured")] = 1000,
    batch_size: Annotated[int, typer.Option(help="documents per forward pass")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="the run directory (default: runs/analyze-…)")] = None,
) -> None:
    """Topic structure of a pretrained encoder: embedding and per-layer, per-head attention class means against
    LDA topics and category labels. Prints the run directory as the last line."""
    from toyformer.text.analysis import analyze as run_analysis
    from toyformer.text.config import AnalysisConfig

    raw = {
        "model_dir": str(model_dir),
        "corpus": {"source": corpus, "lang": lang},
        "docs": docs,
        "batch_size": batch_size,
        "device": device,
    }
    try:
        cfg = _text_config(AnalysisConfig, raw, set_)
        with _progress() as progress:
            run = run_analysis(cfg, out, _stage_bars(progress))
    except ConfigError as e:
        fail(str(e))
    summary = run.summary()
    final = summary["final"]
    table = Table(title=f"{model_dir.name}: {final['docs']} documents", title_justify="left")
    table.add_column("ground truth")
    for column in ("emb same", "emb diff", "cos same", "cos diff", "attn same", "attn diff", "heads +"):
        table.add_column(column, justify="right")
    for name, prefix in (("LDA topics", ""), ("category labels", "label_")):
        keys = (
            "emb_same_topic",
            "emb_diff_topic",
            "emb_cos_same_topic",
            "emb_cos_diff_topic",
            "attn_same_topic",
            "attn_diff_topic",
            "attn_heads_topical",
        )
        table.add_row(name, *(_fmt(final.get(prefix + k)) for k in keys))
    out_console.print(table)
    _print_checks(summary, "claims")
    out_console.print(str(run.path), highlight=False, soft_wrap=True)


@app.command()
def sweeps() -> None:
    """List the shipped sweeps."""
    from toyformer.sweep.spec import load_sweep, sweep_names

    table = Table(title="sweeps")
    table.add_column("name")
    table.add_column("description")
    try:
        for name in sweep_names():
            table.add_row(name, load_sweep(name).description)
    except ConfigError as e:
        fail(str(e))
    out_console.print(table)


@app.command()
def sweep(
    name: Annotated[str | None, typer.Argument(help="a name from `toyformer sweeps` or a sweep TOML file")] = None,
    set_: SetOpt = None,
    backend: Annotated[
        str, typer.Option(help="local: every cell in this process; ray: one Ray Tune trial per block of cells")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="--backend ray: join this Ray cluster (else a local one is started)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="--backend ray: trials at once (default: one per GPU, else per 2 CPUs)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="the sweep directory (default: runs/sweep-NAME-TIME)")] = None,
    retries: Annotated[int, typer.Option(help="fresh attempts of a cell that fails before it is recorded")] = 0,
    resume: Annotated[Path | None, typer.Option(help="finish an interrupted sweep directory")] = None,
) -> None:
    """Train a grid of cells over a base recipe (each a seed group) and draw the theory over it: results.csv,
    summary.json and figures/phase-*.png in the sweep directory, printed as the last line."""
    import datetime as dt

    from toyformer.sweep.local import resume_sweep, run_sweep

    try:
        if backend not in ("local", "ray"):
            raise ConfigError(f"--backend {backend!r}: choose local or ray")
        if backend == "local" and (address is not None or workers is not None):
            flag = "--address" if address is not None else "--workers"
            raise ConfigError(f"{flag} would do nothing with --backend local: add --backend ray")
        if workers is not None and workers < 1:
            raise ConfigError("--workers must be >= 1")
        if retries < 0:
            raise ConfigError("--retries must be >= 0")
        if resume is not None:
            if name or set_ or out:
                raise ConfigError("--resume takes only the sweep directory: the sweep is read from it")
            target = resume
        elif name is None:
            raise ConfigError("give a SWEEP (see `toyformer sweeps`) or --resume SWEEP_DIR")
        else:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            target = out or Path("runs") / f"sweep-{name.removesuffix('.toml').replace('/', '-')}-{stamp}"
        with ExitStack() as stack:
            progress = stack.enter_context(_progress())
            if backend == "ray":
                from toyformer.sweep import raytune

                stack.enter_context(raytune.cluster(address))  # joined before anything is written
                kw = {"train": raytune.train_cells, "address": address, "workers": workers}
                kw["progress"] = _cells_progress(progress)
            else:
                kw = {"progress": _sweep_progress(progress)}
            try:
                if resume is not None:
                    resume_sweep(target, retries=retries, **kw)
                else:
                    run_sweep(name, target, list(set_ or []), retries=retries, **kw)
            except KeyboardInterrupt:
                console.print(f"interrupted: continue with `toyformer sweep --resume {target}`", highlight=False)
                raise typer.Exit(130) from None
        path = _sweep_results(target)
    except ConfigError as e:
        fail(str(e))
    out_console.print(str(path), highlight=False, soft_wrap=True)


def _sweep_progress(progress: Progress):
    """A bar over the blocks of cells, and one over the current block's steps (its cells' seeds stacked)."""
    bars: dict[str, int] = {}

    def on_block(block, k: int, total: int):
        if "blocks" not in bars:
            bars["blocks"] = progress.add_task("blocks of cells", total=total, info="")
        progress.update(bars["blocks"], completed=k, info=", ".join(c.name for c in block.cells))
        if "steps" in bars:
            progress.remove_task(bars["steps"])
        steps = block.cells[0].config.train.steps
        bars["steps"] = progress.add_task(f"{block.name}: {block.members} members", total=steps + 1, info="")

        def on_step(step: int, records) -> None:
            progress.update(bars["steps"], completed=step + 1)
            if step == steps:
                progress.update(bars["blocks"], completed=k + 1)

        return on_step

    return on_block


def _cells_progress(progress: Progress):
    """A bar over the cells, finished or failed (the Ray backend reports no steps)."""
    bar: list[int] = []

    def on_cells(done: int, total: int) -> None:
        if not bar:
            bar.append(progress.add_task("cells", total=total, info=""))
        progress.update(bar[0], completed=done)

    return on_cells


def _sweep_results(path: Path) -> Path:
    """results.csv, summary.json and the phase diagrams of a sweep directory as it stands; the grid's claims."""
    from toyformer.sweep import figures, page, results
    from toyformer.sweep.local import reopen

    spec, grid = reopen(path)
    summary = results.write(path, spec, grid)
    figures.write_figures(path, spec, summary)
    page.write_page(path, spec, summary)
    table = Table(title=f"{spec.name}: {summary['done']} of {len(grid)} cells done", title_justify="left")
    for col in ("grid claim", "held", "cells held", "not claimed (ties)"):
        table.add_column(col, overflow="fold")
    for c in summary["checks"]:
        held = "[green]yes[/]" if c["ok"] else "[red]NO[/]"
        table.add_row(c["name"], held, f"{c['held']} of {c['cells']}", str(len(c["not_claimed"])))
    if summary["failed"]:
        console.print(f"[red]failed cells:[/] {', '.join(summary['failed'])} (their errors are in summary.json)")
    console.print(table)
    return path


DEMO = ["topic/s1", "topic/s2", "topic/s2-squared", "topic/s3", "topic/s4", "induction/e2", "induction/demo"]


@app.command()
def demo(out: Annotated[Path, typer.Option(help="where the demo's runs go")] = Path("runs/demo")) -> None:
    """Both papers on synthetic data: topic structure (regimes A–D) and generalized induction heads (three-stage
    training, and joint training checked against the GIH), claims checked, figures written."""
    from toyformer.runs import Run

    ok, pages = True, []
    for name in DEMO:
        try:
            cfg = tasks.load(name)
            target = out / name.replace("/", "-")
            if (target / "summary.json").is_file():
                path = target
            else:
                path = _train_all(cfg, cfg.seeds, target)
        except ConfigError as e:
            fail(str(e))
        summary = Run(path).summary()
        ok &= _print_checks(summary, f"{name}: {cfg.description}")
        console.print(f"figures: {path / 'figures'}", highlight=False, soft_wrap=True)
        pages.append(path / "report.html")
        console.print(f"report: {pages[-1]}", highlight=False, soft_wrap=True)
    console.print("report pages (open in a browser; no network needed):", highlight=False)
    for page in pages:
        out_console.print(str(page), highlight=False, soft_wrap=True)
    if not ok:
        console.print("[bold red]some claims did not hold[/]")
        raise typer.Exit(1)
    console.print("[bold green]every claim held[/]")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="shorter timings and ensembles of 1, 4 and 16 only")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the results to this JSON file")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    sweep: Annotated[
        str | None,
        typer.Option(help="instead: time this sweep on each backend against a shell loop of `toyformer run --seeds`"),
    ] = None,
    set_: SetOpt = None,
    backends: Annotated[str, typer.Option(help="--sweep: the backends timed, comma-separated")] = "local,ray",
    keep: Annotated[
        Path | None, typer.Option(help="--sweep: leave the sweeps' and the loop's run directories here")
    ] = None,
    loop_cells: Annotated[
        int | None,
        typer.Option(help="--sweep: run the shell loop on this many cells spread over the grid, and scale its time"),
    ] = None,
    scaling: Annotated[
        bool, typer.Option(help="only the induction step's scaling table (d, H, M, L) against the banded model")
    ] = False,
) -> None:
    """Speed and memory: generators (tokens/s), S2 and E5 steps/s, seed-ensemble scaling, probe overhead, peak
    memory, and on the CPU the induction step's scaling table (d, H, M, L) against the plain banded model; on a GPU
    also FLOP/s and bandwidth against the card's measured peaks. Prints the JSON. With --sweep, a whole sweep's wall
    time on each backend against the same cells run one after another as separate processes."""
    from toyformer import bench as bench_mod

    if sweep is not None:
        try:
            chosen = tuple(b.strip() for b in backends.split(","))
            if not chosen or any(b not in ("local", "ray") for b in chosen):
                raise ConfigError(f"--backends {backends!r}: a comma-separated list of local and ray")
            if quick or device != "cpu" or threads is not None:
                raise ConfigError(
                    "--sweep times whole commands: --quick, --device and --threads do nothing there "
                    "(a GPU sweep: --set device=cuda)"
                )
            if json_path is not None and not json_path.parent.is_dir():
                raise ConfigError(f"--json {json_path}: the folder {json_path.parent} does not exist")
            if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
                raise ConfigError(f"--keep {keep}: exists and is not an empty folder; name a new one")
            if loop_cells is not None and loop_cells < 1:
                raise ConfigError(f"--loop-cells must be >= 1, got {loop_cells}")
            from toyformer.sweep.spec import cells, load_sweep

            grid = cells(load_sweep(sweep, list(set_ or [])))  # every cell valid before anything runs
            if grid[0].config.device == "cuda" and not torch_cuda_available():
                raise ConfigError("device = cuda: no CUDA device is visible here; leave device at cpu")
        except ConfigError as e:
            fail(str(e))
        with console.status("benchmarking") as status:
            import torch

            results = bench_mod.machine(torch.device(grid[0].config.device)) | bench_mod.sweep_speed(
                sweep, list(set_ or []), chosen, _bench_progress(status), keep, loop_cells
            )
        out_console.print(bench_mod.write(results, json_path), highlight=False, soft_wrap=True)
        return
    if set_ or loop_cells is not None:
        fail(("--set" if set_ else "--loop-cells") + " applies to --sweep only")
    if scaling and device != "cpu":
        fail("--scaling times the CPU step (2 cores in benchmarks/RESULTS.md): leave --device at cpu")
    try:
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device!r}: use cpu or cuda")
        if device == "cuda" and not torch_cuda_available():
            raise ConfigError("--device cuda: no CUDA device is visible here; use --device cpu")
        if json_path is not None and not json_path.parent.is_dir():
            raise ConfigError(f"--json {json_path}: the folder {json_path.parent} does not exist")
    except ConfigError as e:
        fail(str(e))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with console.status("benchmarking") as status:
        if scaling:
            import torch

            results = bench_mod.machine(torch.device("cpu")) | {
                "scaling": bench_mod.scaling(0.5 if quick else 3.0, quick, _bench_progress(status))
            }
        else:
            results = bench_mod.run(device, quick, _bench_progress(status))
    out_console.print(bench_mod.write(results, json_path), highlight=False, soft_wrap=True)


def _bench_progress(status):
    """The benchmark's progress: a status line on a terminal, else one timestamped line per message (a log)."""
    import time

    start = time.perf_counter()

    def show(msg: str) -> None:
        if console.is_terminal:
            status.update(f"benchmarking: {msg}")
        else:
            console.print(f"[{time.perf_counter() - start:7.1f} s] {msg}", highlight=False, soft_wrap=True)

    return show


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
