"""Speed and memory of the training path (``toyformer bench``): generator throughput, one-model steps/s in the S2 and
E5 settings, seed-ensemble scaling, probe overhead, the standard transformer against an eager nanoGPT-like model of
the same weights, and peak memory, as one JSON object. On a GPU it also measures
the card's matrix-multiply peak and copy bandwidth and reports the largest ensemble's achieved FLOP/s and memory
traffic against them.

Every rate is timed in this process on this device: warm-up calls first, then whole calls until a minimum time has
passed, with the device synchronised at both ends. A training step is exactly what ``toyformer run`` does between
probes (batch, loss, backward, optimizer step), on experiments built from the recipes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from toyformer.induction.chains import sample_batch
from toyformer.random import generator
from toyformer.tasks import build, load, task_of
from toyformer.topic.lda import sample_documents, topic_word_matrix
from toyformer.train.ensemble import Ensemble, Member
from toyformer.train.seeds import member_config

MEMBERS = (1, 4, 16, 64, 256)
QUICK_MEMBERS = (1, 4, 16)
NGRAM = {"d": 3, "parents": (1, 2), "alpha": 0.1, "length": 100}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[int], object], device: torch.device, seconds: float, warmup: int = 2) -> float:
    """Calls of ``fn(i)`` per second (i counts calls, so a step function sees fresh steps)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn(warmup + calls)
        calls += 1
        if calls % 4 == 0 or device.type != "cuda":
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return calls / elapsed


def machine(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": dt.date.today().isoformat(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def in_child(function: str, *args) -> dict:
    """The JSON a function of this module prints, run in a child process (so that its peak memory is its own)."""
    code = f"from toyformer.bench import {function}; {function}(*{args!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{function}{args!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(results: dict, path: Path | None) -> str:
    """The JSON text of ``results`` (also written to ``path``)."""
    text = json.dumps(results, indent=2)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text


# ---------------------------------------------------------------------------------------------------------------
# What is timed


def ngram_tokens_per_s(device: torch.device, chains: int, seconds: float) -> float:
    def call(i: int) -> None:
        gen = generator(i, "bench-ngram", device=device)
        sample_batch(chains, NGRAM["d"], NGRAM["parents"], NGRAM["alpha"], NGRAM["length"], gen, device=device)

    return rate(call, device, seconds) * chains * (NGRAM["length"] + 1)


def lda_tokens_per_s(device: torch.device, docs: int, seconds: float) -> float:
    cfg = load("topic/s2").data
    phi = topic_word_matrix(cfg).to(device)
    words = []

    def call(i: int) -> None:
        out = sample_documents(cfg, docs, generator(i, "bench-lda", device=device), device, phi)
        words.append(out.lengths.sum())

    per_s = rate(call, device, seconds)
    return per_s * float(torch.stack(words).float().mean())  # words drawn per second


def experiments(setting: str, members: int, device: torch.device) -> list:
    recipe, overrides = SETTINGS[setting]
    cfg = load(recipe, overrides + [f"device={device.type}"])
    return [build(member_config(cfg, seed)) for seed in range(members)]


SETTINGS = {  # the finite-N theory of topic runs is not timed: 10 simulated documents instead of 20,000
    "s2": ("topic/s2", ["theory.samples=10"]),
    "e5": ("induction/e5", []),
}


def solo(setting: str, device: torch.device):
    """One model as a solo run trains it, and its step function."""
    (x,) = experiments(setting, 1, device)

    def step(i: int) -> None:
        loss = x.loss(x.model, x.batch(i))
        x.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        x.optimizer.step()

    return x, step


REPEATS = 5  # one model's steps/s is the median of this many timings


def solo_steps_per_s(setting: str, device: torch.device, seconds: float) -> tuple[list[float], float]:
    """Steps/s of one model as a solo run trains it, ``REPEATS`` timings in a row (a shared machine's load moves
    single timings by 15% or more), and the seconds one probe (all of the run's probes) takes."""
    x, step = solo(setting, device)
    steps = [rate(step, device, seconds) for _ in range(REPEATS)]
    probe = 1.0 / rate(lambda i: x.probe(i, 0.0), device, seconds / 2, warmup=1)
    return steps, probe


def paired_speedup(setting: str, members: int, device: torch.device, seconds: float, rounds: int = 5) -> dict:
    """Member-steps/s of an ensemble over steps/s of one model, timed in alternation (one model, then the ensemble,
    ``rounds`` times) so that a shared machine's changing load hits both alike; the median ratio."""
    _, one = solo(setting, device)
    _, many = ensemble(setting, members, device)
    ratios = [members * rate(many, device, seconds) / rate(one, device, seconds) for _ in range(rounds)]
    return {"members": members, "ratios": ratios, "median": sorted(ratios)[rounds // 2]}


def ensemble(setting: str, members: int, device: torch.device):
    """The stacked ensemble of ``members`` seeds and its step function (gradients, then update)."""
    xs = experiments(setting, members, device)
    ens = Ensemble([Member(seed, x, None) for seed, x in enumerate(xs)], Path("."), task_of(xs[0].cfg))

    def step(i: int) -> None:
        ens.update(ens.gradients(i))

    return ens, step


class TrafficMode(TorchDispatchMode):
    """Bytes every ATen op reads and writes (its tensor arguments and results; a gather reads only as much of its
    source as it writes): the traffic of a step if nothing stayed in cache, an estimate of what memory must move."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        written = sum(_nbytes(t) for t in torch.utils._pytree.tree_leaves(out))
        read = [_nbytes(t) for t in torch.utils._pytree.tree_leaves((args, kwargs))]
        if func.__name__.split(".")[0] in GATHERS:
            read = [min(r, written) for r in read]
        self.bytes += written + sum(read)
        return out


GATHERS = {"index_select", "gather", "embedding", "take", "index"}


def _nbytes(t) -> int:
    """A tensor's bytes, an expanded view counted once (its storage), not once per broadcast copy."""
    if not isinstance(t, torch.Tensor):
        return 0
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def step_work(step: Callable[[int], None]) -> tuple[float, float]:
    """FLOPs (matrix products, as counted by torch's FlopCounterMode) and bytes (TrafficMode) of one step."""
    with FlopCounterMode(display=False) as flops:
        step(10_000)
    with TrafficMode() as traffic:
        step(10_001)
    return float(flops.get_total_flops()), float(traffic.bytes)


def card_peaks(device: torch.device) -> dict:
    """The card's measured float32 matrix-multiply rate (TF32 off and on) and device-to-device copy bandwidth."""
    n = 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = {}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        per_s = rate(lambda i: a @ b, device, 1.0)
        out["matmul_tf32_flop_per_s" if tf32 else "matmul_fp32_flop_per_s"] = per_s * 2 * n**3
    torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.empty(1 << 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    out["copy_bytes_per_s"] = rate(lambda i: dst.copy_(src), device, 1.0) * 2 * src.numel() * 4
    return out


def run(device: str = "cpu", quick: bool = False, progress: Callable[[str], None] = lambda msg: None) -> dict:
    dev = torch.device(device)
    seconds = 0.5 if quick else 2.0
    results = machine(dev)
    progress("generators")
    results["ngram_tokens_per_s"] = ngram_tokens_per_s(dev, 20_000 if quick else 100_000, seconds)
    results["lda_tokens_per_s"] = lda_tokens_per_s(dev, 5_000 if quick else 20_000, seconds)
    probes = {}
    for setting in SETTINGS:
        progress(f"{setting}: one model")
        repeats, probe = solo_steps_per_s(setting, dev, seconds)
        steps = sorted(repeats)[len(repeats) // 2]
        results[f"{setting}_steps_per_s"], results[f"{setting}_steps_per_s_repeats"] = steps, repeats
        probes[setting] = {"probe_s": probe, "step_s": 1.0 / steps, "probe_in_steps": probe * steps}
    results["probe_overhead"] = probes
    sizes = QUICK_MEMBERS if quick else MEMBERS
    if dev.type == "cpu":  # each member holds its own 10,000 documents or chains: a 2-core machine stops earlier
        sizes_of = {"s2": tuple(m for m in sizes if m <= 64), "e5": tuple(m for m in sizes if m <= 16)}
    else:
        sizes_of = {"s2": sizes, "e5": sizes}
    results["ensemble"], detail = {}, {}
    for setting, sizes in sizes_of.items():
        results["ensemble"][setting] = {}
        for members in sizes:
            progress(f"{setting}: ensemble of {members}")
            ens, step = ensemble(setting, members, dev)
            steps = rate(step, dev, seconds)
            results["ensemble"][setting][str(members)] = steps * members
            detail.setdefault(setting, {})[str(members)] = {"steps_per_s": steps, "member_steps_per_s": steps * members}
            if members == max(sizes) and dev.type == "cuda":
                flops, traffic = step_work(step)
                detail[setting][str(members)] |= {
                    "flop_per_step": flops,
                    "bytes_per_step": traffic,
                    "achieved_flop_per_s": flops * steps,
                    "achieved_bytes_per_s": traffic * steps,
                }
            del ens, step
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    results["ensemble_detail"] = detail
    results["s2_paired_speedup"] = paired_speedup("s2", 16 if dev.type == "cpu" else 256, dev, seconds)
    for setting in sizes_of:
        solo = results[f"{setting}_steps_per_s"]
        results[f"{setting}_ensemble_speedup"] = {m: v / solo for m, v in results["ensemble"][setting].items()}
    if dev.type == "cuda":
        progress("card peaks")
        peaks = card_peaks(dev)
        results["card"] = peaks
        for setting, sizes in sizes_of.items():
            d = detail[setting][str(max(sizes))]
            d["share_of_matmul_fp32_peak"] = d["achieved_flop_per_s"] / peaks["matmul_fp32_flop_per_s"]
            d["share_of_copy_bandwidth"] = d["achieved_bytes_per_s"] / peaks["copy_bytes_per_s"]
        results["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if dev.type == "cpu":
        progress("standard transformer against the eager reference")
        # the eager reference takes ~10 s a step
        results["standard"] = standard_speed(3.0, 1) if quick else standard_speed(30.0, 3)
        results["standard_speedup"] = results["standard"]["speedup"]
        for key in ("speedup_default_allocator", "speedup_same_allocator"):
            results[f"standard_{key}"] = results["standard"][key]
    if dev.type == "cpu":
        results["scaling"] = scaling(0.5 if quick else 3.0, quick, progress)
    results["peak_memory_mb"] = peak_memory_mb()
    return results


# ---------------------------------------------------------------------------------------------------------------
# The induction model's step as the vocabulary, the heads, the window and the length grow

SCALING_BASE = "induction/grid-base"  # full batch of 9,000 chains, the paper's nll, SGD
SCALING = [  # (axis, data keys, model keys) changed from the base: d = 3, H = 3 (code layout), L = 100
    ("base", {}, {}),
    *(("d", {"d": d}, {}) for d in (4, 5, 8, 10)),
    *(("H", {}, {"heads": h}) for h in (2, 4, 6)),
    *(("M", {}, {"layout": "paper", "window": m}) for m in (3, 5, 8)),
    *(("L", {"length": n}, {}) for n in (50, 200, 400)),
]
QUICK_SCALING = [(axis, data | {"sequences": 2000}, model) for axis, data, model in SCALING[:2]]


def _scaling_label(data: dict, model: dict) -> str:
    data = {k: v for k, v in data.items() if k != "sequences"}
    if not data and not model:
        return "d=3, H=3, L=100"
    if "window" in model:
        return f"paper layout, M={model['window']}"
    return ", ".join(f"{'L' if k == 'length' else k}={v}" for k, v in (data | model).items()).replace("heads", "H")


def _scaling_child(impl: str, seconds: float, data: dict, model: dict) -> None:
    """In a child process (its peak memory its own): steps/s of one training step (SGD on the nll of the whole
    training set) of TF(M, H, d, D) at the scaling base with ``data`` and ``model`` keys changed, by toyformer's
    chosen path ("fast") or the plain vectorised banded model (every position its own window: "banded"); prints
    JSON. The step reads no theory, so the setting is not held to the theory's state limit (M = 8 at d = 3)."""
    from toyformer.induction.config import ChainConfig, GIHModelConfig
    from toyformer.induction.experiment import ChainData
    from toyformer.induction.losses import prediction_loss
    from toyformer.induction.model import GIHTransformer
    from toyformer.induction.plan import describe_plan

    base = load(SCALING_BASE)
    keys = model | ({"path": "positions"} if impl == "banded" else {})
    cfg = base.model_copy(
        update={
            "data": ChainConfig(**base.data.model_dump() | data),
            "model": GIHModelConfig(**base.model.model_dump() | keys),
        }
    )
    device = torch.device("cpu")
    net = GIHTransformer(cfg.model, cfg.data.d)
    start = time.perf_counter()
    chains = ChainData(cfg, net.band, device)
    plan_s = time.perf_counter() - start
    plan = chains.train_plan
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        prediction_loss(net(plan), plan.labels, "nll").backward()
        optimizer.step()

    steps = rate(step, device, seconds, warmup=1)
    out = {"steps_per_s": steps, "peak_memory_mb": peak_memory_mb(), "plan_s": plan_s, "plan": describe_plan(plan)}
    out["plan"].pop("estimated_work", None)
    print(json.dumps(out | {"chains": len(plan.labels), "length": cfg.data.length}))


def scaling(seconds: float, quick: bool = False, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The scaling table: for each setting of ``SCALING``, toyformer's step and the plain banded model's, each in its
    own process on this CPU, one after the other; the speedup over the banded model, and each setting's time per
    step over the base's (d = 3, H = 3 at the same chains and length: the L rows have no such base)."""
    rows = []
    for axis, data, model in QUICK_SCALING if quick else SCALING:
        label = _scaling_label(data, model)
        row = {"axis": axis, "setting": label}
        for impl in ("fast", "banded"):
            progress(f"scaling: {label}, {impl}")
            code = (
                f"from toyformer.bench import _scaling_child; _scaling_child({impl!r}, {seconds}, {data!r}, {model!r})"
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"scaling {label} ({impl}) failed: {done.stderr.strip().splitlines()[-1:]}")
            row[impl] = json.loads(done.stdout.strip().splitlines()[-1])
        row["speedup_over_banded"] = row["fast"]["steps_per_s"] / row["banded"]["steps_per_s"]
        rows.append(row)
    base = rows[0]["fast"]["steps_per_s"]
    for row in rows:
        row["step_time_over_base"] = None if row["axis"] == "L" else base / row["fast"]["steps_per_s"]
    topic = topic_scaling(seconds, quick, progress)
    return {"recipe": SCALING_BASE, "threads": torch.get_num_threads(), "rows": rows, "topic": topic}


TOPIC_SCALING_BASE = "topic/s3"  # trained attention, one-hot inputs: the width is the vocabulary
TOPIC_SCALING = [  # (T, v, shortest and longest document): T·v = 100, 1,000 and 4,000 words
    (t, v, lo, hi) for t, v in ((10, 10), (10, 100), (40, 100)) for lo, hi in ((100, 150), (500, 1000))
]
QUICK_TOPIC_SCALING = TOPIC_SCALING[:1]


def _topic_scaling_child(seconds: float, topics: int, words: int, low: int, high: int) -> None:
    """In a child process: a topic/s3 training step's and a probe's mean seconds at T topics of v words and documents
    of ``low``..``high`` words, and the probes' share of a default run of the recipe (its steps and its probes); prints
    JSON. The finite-sample theory is not timed (10 simulated documents)."""
    sets = [f"data.num_topics={topics}", f"data.words_per_topic={words}", "theory.samples=10"]
    x = build(load(TOPIC_SCALING_BASE, sets + [f"data.doc_len_min={low}", f"data.doc_len_max={high}"]))

    def step(i: int) -> None:
        loss = x.loss(x.model, x.batch(i))
        x.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        x.optimizer.step()

    cpu = torch.device("cpu")
    steps = rate(step, cpu, seconds, warmup=1)
    probe = 1.0 / rate(lambda i: x.probe(i, 0.0), cpu, min(seconds, 2.0), warmup=1)  # a mean over 2 s of probes
    total, probes, _ = x.schedule()
    share = len(probes) * probe / (total / steps + len(probes) * probe)
    out = {"vocabulary": topics * words, "doc_words": f"{low}-{high}", "step_s": 1.0 / steps, "probe_s": probe}
    print(
        json.dumps(
            out | {"probes": len(probes), "steps": total, "probe_share": share, "peak_memory_mb": peak_memory_mb()}
        )
    )


def topic_scaling(seconds: float, quick: bool = False, progress: Callable[[str], None] = lambda msg: None) -> list:
    """The topic model's step and probe as the vocabulary (T·v) and the documents grow, each setting in its own
    process on this CPU, with the probes' share of a default run."""
    rows = []
    for topics, words, low, high in QUICK_TOPIC_SCALING if quick else TOPIC_SCALING:
        progress(f"topic scaling: T·v = {topics * words}, documents of {low}-{high} words")
        rows.append(in_child("_topic_scaling_child", seconds, topics, words, low, high))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# A whole sweep against the shell loop a user would write


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def spread(grid: list, k: int) -> list:
    """``k`` of the grid's cells spread evenly over it (its first and, for k > 1, its last among them)."""
    if k >= len(grid):
        return list(grid)
    return [grid[round(i * (len(grid) - 1) / (k - 1))] for i in range(k)] if k > 1 else [grid[0]]


def sweep_speed(
    name: str,
    overrides: list[str],
    backends: tuple[str, ...] = ("local", "ray"),
    progress: Callable[[str], None] = lambda msg: None,
    keep: Path | None = None,
    loop_cells: int | None = None,
) -> dict:
    """Wall time of ``toyformer sweep NAME`` on each backend, against the same cells run one after another as
    separate ``toyformer run RECIPE --seeds …`` processes (each cell's seeds stacked, as a user's shell loop would
    run them), every one a child process on this machine, in this call; and how far their numbers agree. The
    directories are left in ``keep`` (one per backend, and ``loop/``), else deleted.

    With ``loop_cells`` the loop runs only that many cells, spread evenly over the grid, and its time for the whole
    grid is estimated as their mean times the number of cells (``shell_loop_estimated``); each timed cell's seconds
    are in ``shell_loop_cell_s`` either way."""
    from toyformer.sweep.spec import cells, literal, load_sweep

    spec = load_sweep(name, overrides)
    grid = cells(spec)
    cli = [sys.executable, "-m", "toyformer.cli"]
    env = dict(os.environ)
    seeds = ",".join(map(str, spec.seeds))
    out: dict = {"sweep": spec.name, "set": spec.set, "cells": len(grid), "seeds": len(spec.seeds)}
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() if keep is None else contextlib.nullcontext(str(keep)) as tmp:
        dirs = {}
        for backend in backends:
            progress(f"{spec.name}: the sweep, {backend} backend")
            dirs[backend] = Path(tmp) / backend
            cmd = [*cli, "sweep", name, "--backend", backend, "--out", str(dirs[backend])]
            out[f"{backend}_s"] = _timed(cmd + [a for o in overrides for a in ("--set", o)], env)
        timed = grid if loop_cells is None else spread(grid, loop_cells)
        per_cell = []
        for k, cell in enumerate(timed):
            progress(f"{spec.name}: shell loop, cell {k + 1} of {len(timed)} ({sum(per_cell):.0f} s so far)")
            sets = [*spec.set, *(f"{key}={literal(v)}" for key, v in cell.values.items())]
            cmd = [*cli, "run", spec.recipe, "--seeds", seeds, "--out", str(Path(tmp) / "loop" / cell.name)]
            per_cell.append(_timed(cmd + [a for s in sets for a in ("--set", s)], env))
        out["shell_loop_cell_s"] = {cell.name: s for cell, s in zip(timed, per_cell, strict=True)}
        out["shell_loop_estimated"] = len(timed) < len(grid)
        loop = sum(per_cell) * len(grid) / len(timed)
        out["shell_loop_s"] = loop
        for backend in backends:
            out[f"{backend}_vs_shell_loop"] = loop / out[f"{backend}_s"]
        # the same members, stacked across cells or within one: the numbers a sweep reports are the loop's
        worst = 0.0
        for cell in timed:
            for seed in spec.seeds:
                a = json.loads((dirs[backends[0]] / "cells" / cell.name / f"seed-{seed}" / "summary.json").read_text())
                b = json.loads((Path(tmp) / "loop" / cell.name / f"seed-{seed}" / "summary.json").read_text())
                losses = [k for k in a["final"] if k.startswith("loss") and isinstance(a["final"][k], float)]
                worst = max([worst, *(abs(a["final"][k] - b["final"][k]) for k in losses)])
        out["max_final_loss_difference"] = worst
    if "ray" in backends and "local" in backends:
        out["ray_overhead_s"] = out["ray_s"] - out["local_s"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Standard transformers against the same model written the straightforward way

# full batch; absolute positions, the only kind the eager reference has
STANDARD = ("induction/standard-attn2", ["data.batch_size=10000", "data.targets=last", "model.positions=absolute"])


class EagerGPT(torch.nn.Module):
    """The model of a (attention-only, absolute positions) ``StandardTransformer`` written as nanoGPT writes one: a
    fused QKV linear, explicit masked-softmax attention and logits at every position, the loss then reading the
    last. It takes the standard model's weights, so both compute the same loss."""

    def __init__(self, model) -> None:
        super().__init__()
        nn = torch.nn
        cfg = model.cfg
        self.heads, self.d_head = cfg.heads, cfg.head_dim
        self.wte, self.wpe = nn.Parameter(model.W_E.detach().clone()), nn.Parameter(model.W_pos.detach().clone())
        self.attn, self.proj = nn.ModuleList(), nn.ModuleList()
        for block in model.blocks:
            a = block.attn
            qkv = nn.Linear(cfg.d_model, 3 * cfg.heads * cfg.head_dim)
            w = torch.cat([m.detach().permute(0, 2, 1).reshape(-1, cfg.d_model) for m in (a.W_Q, a.W_K, a.W_V)])
            qkv.weight.data.copy_(w)
            qkv.bias.data.copy_(torch.cat([b.detach().reshape(-1) for b in (a.b_Q, a.b_K, a.b_V)]))
            proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.d_model)
            proj.weight.data.copy_(a.W_O.detach().reshape(-1, cfg.d_model).T)
            proj.bias.data.copy_(a.b_O.detach())
            self.attn.append(qkv)
            self.proj.append(proj)
        self.lm_head = nn.Parameter(model.unembed().detach().clone())
        self.b_U = nn.Parameter(model.b_U.detach().clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        x = self.wte[tokens] + self.wpe[:t]
        mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        for qkv, proj in zip(self.attn, self.proj, strict=True):
            q, k, v = qkv(x).split(self.heads * self.d_head, dim=2)
            q, k, v = (z.view(b, t, self.heads, self.d_head).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / self.d_head**0.5)
            att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(b, t, self.heads * self.d_head)
            x = x + proj(y)
        return x @ self.lm_head + self.b_U


def _standard_child(impl: str, seconds: float, recipe: str, overrides: list[str]) -> None:
    """In a child process (so that its peak memory is its own): steps/s of one implementation on the grid-base
    chains, full batch, the loss at x_{L+1}; prints JSON. "toyformer" runs as ``toyformer run`` does (with freed
    memory reused, ``toyformer.train.memory``), "eager" as a plain script does (the default allocator); the
    "-system" and "-reused" variants swap the allocator, so that the code alone is compared too."""
    import torch.nn.functional as F

    from toyformer.standard.experiment import sequence_loss
    from toyformer.train.memory import reuse_freed_memory

    if impl in ("toyformer", "eager-reused"):
        reuse_freed_memory()
    x = build(load(recipe, overrides))
    tokens = x.batch(0)
    model = x.model if impl.startswith("toyformer") else EagerGPT(x.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        if impl.startswith("toyformer"):
            return sequence_loss(model, tokens, "last")
        return F.cross_entropy(model(tokens[:, :-1])[:, -1], tokens[:, -1])

    first = float(loss())

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    steps = rate(step, torch.device("cpu"), seconds, warmup=1)
    print(json.dumps({"steps_per_s": steps, "peak_memory_mb": peak_memory_mb(), "first_loss": first}))


def standard_speed(seconds: float, repeats: int = 1) -> dict:
    """The standard transformer's training step (fused attention, the last block at the last position only) against
    the eager nanoGPT-like model with the same weights, each in its own process on this CPU. "speedup": toyformer as
    its runs go (freed memory reused) against the reference as a plain script runs (the default allocator); the code
    alone: both with the default allocator ("speedup_default_allocator", toyformer under TOYFORMER_MALLOC=system)
    and both with freed memory reused ("speedup_same_allocator"). With ``repeats``, the four are timed in turn that
    many times and each speed is the median (the machine's speed drifts between processes by up to a quarter)."""
    recipe, overrides = STANDARD
    impls = ("toyformer", "eager", "toyformer-system", "eager-reused")
    times: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            times[impl].append(in_child("_standard_child", impl, seconds, recipe, overrides))
    out: dict = {"setting": f"{recipe} with {' '.join(overrides)}", "repeats": repeats}
    for impl, runs in times.items():
        speeds = sorted(r["steps_per_s"] for r in runs)
        out[impl] = runs[0] | {"steps_per_s": speeds[len(speeds) // 2], "each_steps_per_s": speeds}
        out[impl]["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
    out["speedup"] = out["toyformer"]["steps_per_s"] / out["eager"]["steps_per_s"]
    out["speedup_default_allocator"] = out["toyformer-system"]["steps_per_s"] / out["eager"]["steps_per_s"]
    out["speedup_same_allocator"] = out["toyformer"]["steps_per_s"] / out["eager-reused"]["steps_per_s"]
    out["same_loss"] = max(abs(out["toyformer"]["first_loss"] - out[i]["first_loss"]) for i in impls) < 1e-4
    return out
