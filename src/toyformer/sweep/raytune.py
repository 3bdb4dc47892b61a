"""The Ray backend (the ``toyformer[ray]`` extra): one Ray Tune trial per block of stacked cells, on an existing
cluster (``address``) or on a local one started for the sweep and shut down after it. A trial trains its block
exactly as the local backend does (``local.train_block``: the same files, retries and recorded failures), so the
sweep directory is the same whichever backend wrote it, and must be on a filesystem every node sees.

Resume is two-level. Ray's experiment state lives in ``ray/`` in the sweep directory and ``Tuner.restore`` picks
it up, running again the trials that had not finished; inside a trial, a block killed part-way continues from its
own exact-resume state in ``blocks/``, and a block whose cells are all finished or failed returns at once. A trial
whose worker dies (killed, out of memory) is retried by Ray ``retries`` times before its cells are recorded as
failed with Ray's error."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from toyformer.config import ConfigError
from toyformer.sweep.local import blocks, fail, reopen, todo, train_block, unfinished
from toyformer.sweep.spec import Cell, SweepConfig

EXPERIMENT = "sweep"  # the Tune experiment's name, under <sweep dir>/ray

# (cells finished or failed, cells in the sweep), called as they finish
CellsDone = Callable[[int, int], None]
POLL_S = 1.0
CONNECT_S = 10.0  # how long to wait for a cluster's head to answer


def modules():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("--backend ray needs the ray extra: pip install 'toyformer[ray]'") from None
    return ray, tune


def trial(config: dict) -> None:
    """A Tune trial: train one block of the sweep in ``config['out']`` from where it stands."""
    import torch

    _, tune = modules()
    out = Path(config["out"])
    spec, grid = reopen(out)
    (block,) = [b for b in blocks(spec, grid) if b.name == config["block"]]
    torch.set_num_threads(max(1, int(config["cpus"])))
    if any(unfinished(out, c) for c in block.cells):
        train_block(out, spec, block, config["retries"])
    tune.report({"unfinished": sum(unfinished(out, c) for c in block.cells), "cells": len(block.cells)})


def resources(cluster: dict, workers: int | None) -> tuple[int, dict]:
    """Trials at once and each trial's share of the cluster: its GPUs split evenly when it has any, else one trial
    per two CPUs; every trial at least one CPU."""
    cpus, gpus = int(cluster.get("CPU", 1)), int(cluster.get("GPU", 0))
    if workers is None:
        workers = gpus or max(1, cpus // 2)
    if workers < 1:
        raise ConfigError("--workers must be >= 1")
    share = {"cpu": max(1, cpus // workers)}
    if gpus:
        share["gpu"] = gpus / workers if workers > gpus else float(math.floor(gpus / workers))
    return workers, share


def train_cells(
    out: Path,
    spec: SweepConfig,
    grid: list[Cell],
    retries: int = 0,
    progress: CellsDone | None = None,
    address: str | None = None,
    workers: int | None = None,
) -> None:
    """Every unfinished block as a Tune trial, at most ``workers`` at once; Ray's saved experiment is restored when
    the sweep directory has one."""
    ray, tune = modules()
    out = Path(out).resolve()
    left = todo(out, spec, grid)
    if not left:
        return
    with cluster(address):
        workers, share = resources(ray.cluster_resources(), workers)
        trainable = tune.with_resources(trial, share)
        storage = out / "ray"
        path = storage / EXPERIMENT
        names = {b.name: b for b in blocks(spec, grid)}
        run = tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=retries),
            verbose=0,
        )
        if tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        else:  # a sweep never started on Ray (or killed before Ray saved its experiment): a fresh experiment
            shutil.rmtree(path, ignore_errors=True)
            space = {"out": str(out), "retries": retries, "cpus": share["cpu"]}
            space["block"] = tune.grid_search([b.name for b in left])
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True),
                run_config=run,
            )
        with _watch(out, grid, progress):
            results = tuner.fit()
        for result in results:
            if result.error is not None:  # the trial's worker died, retries times: its cells are recorded
                block = names[result.config["block"]]
                fail(out, block, result.error, retries + 1)


@contextlib.contextmanager
def cluster(address: str | None = None):
    """Ray connected while the context lasts: to the cluster at ``address``, else to a local one started here and
    shut down after; nothing is done when Ray is already initialised."""
    ray, _ = modules()
    if ray.is_initialized():
        yield
        return
    if address and address != "auto":
        _reachable(address)
    try:  # "local": a new cluster even when another runs on this machine
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else "; a cluster with token auth needs RAY_AUTH_MODE=token"
        raise ConfigError(f"--address {address}: no Ray cluster to join ({str(e).splitlines()[0]}){hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _reachable(address: str) -> None:
    """Refuse an address nothing listens at (Ray itself would wait for it forever)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_S).close()
    except ValueError:
        raise ConfigError(f"--address {address}: give HOST:PORT of a Ray cluster's head (or auto)") from None
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


@contextlib.contextmanager
def _watch(out: Path, grid: list[Cell], progress: CellsDone | None):
    """Report the finished cells every POLL_S seconds while Tune runs (they are files: a restored experiment
    reports the same way)."""
    stop = threading.Event()

    def poll() -> None:
        while True:
            progress(sum(not unfinished(out, c) for c in grid), len(grid))
            if stop.wait(POLL_S):
                return

    thread = threading.Thread(target=poll, daemon=True) if progress else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join()
            progress(sum(not unfinished(out, c) for c in grid), len(grid))
