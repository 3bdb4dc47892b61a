"""Exact resume under any kill: runs killed with SIGKILL at random moments (several times each), resumed, must end
bit-identical to the uninterrupted run: every metrics record and the final checkpoint's tensors.

Each kill is classified by what the run directory held right after it: ``before the directory`` was made (the
command is then given again), ``during`` a checkpoint write (a temporary ``.step-*`` file was left), ``before`` the
first checkpoint after step 0, or ``between`` checkpoints. Deaths inside a write are also forced: the process exits
half-way through its n-th checkpoint write, metrics append or matrix file write; the report's matrices must end
byte-identical too. The slow test does both to a solo topic run, a solo induction run, a staged induction run and a
stacked topic group (about 45 kills in all); the default suite kills one short run twice and forces one death inside
each kind of write.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toyformer.runs import MATRICES

TOPIC = ["data.train_docs=200", "data.dev_docs=40", "theory.samples=200", "probes.docs=8", "masking.static=false"]
STAGES = ["train.stages.0.steps=300", "train.stages.1.steps=300", "train.stages.2.steps=300"]
SETTINGS = {  # name → (recipe, --set overrides, other flags)
    "topic solo": ("topic/s5-adam", [*TOPIC, "train.steps=400", "train.probes=30", "train.checkpoints=12"], []),
    "induction solo": ("induction/grid-base", ["train.stages.0.steps=2000", "train.checkpoints=12"], []),
    "induction staged": ("induction/e2", ["data.sequences=2000", *STAGES, "train.checkpoints=12"], []),
    "topic group": ("topic/s4", [*TOPIC, "train.steps=400", "train.checkpoints=12"], ["--seeds", "0-2"]),
}
SHORT = ("topic/s5-adam", [*TOPIC, "train.steps=150", "train.probes=12", "train.checkpoints=8"], [])


def _args(setting: tuple[str, list[str], list[str]], out: Path) -> list[str]:
    recipe, overrides, flags = setting
    return ["run", recipe, "--out", str(out), *(a for o in overrides for a in ("--set", o)), *flags]


def _cli(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # every process alike: float reductions depend on the threads
    return subprocess.Popen(
        [sys.executable, "-m", "toyformer.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


# Runs the CLI but dies (os._exit, as abrupt as SIGKILL) in the middle of its n-th checkpoint write (the temporary
# file half written) or its n-th metrics append (half a line written): the two writes a kill can tear.
DYING = """
import json, os, sys, tempfile
import toyformer.runs as runs
kind, n, count = sys.argv[1], int(sys.argv[2]), [0]
write, append = runs.atomic_write, runs.Run.append_metrics
def atomic_write(path, data):
    if path.suffix == (".safetensors" if kind == "matrices" else ".pt"):
        count[0] += 1
        if count[0] == n:
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.write(fd, data[: len(data) // 2])
            os._exit(9)
    return write(path, data)
def append_metrics(self, record):
    count[0] += 1
    if count[0] == n:
        with open(self.path / "metrics.jsonl", "a") as f:
            line = json.dumps(record) + "\\n"
            f.write(line[: len(line) // 2])
        os._exit(9)
    return append(self, record)
if kind in ("checkpoint", "matrices"):
    runs.atomic_write = atomic_write
else:
    runs.Run.append_metrics = append_metrics
from toyformer.cli import app
sys.argv = ["toyformer", *sys.argv[3:]]
app()
"""


def die_during_write_and_resume(setting: tuple, tmp: Path, kind: str, n: int) -> None:
    """Die in the middle of the n-th write of ``kind``, resume, and compare with the uninterrupted run."""
    whole, cut = tmp / "whole", tmp / "cut"
    if not whole.exists():
        assert _cli(*_args(setting, whole)).wait() == 0
    shutil.rmtree(cut, ignore_errors=True)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    dying = subprocess.run([sys.executable, "-c", DYING, kind, str(n), *_args(setting, cut)], env=env)
    assert dying.returncode == 9, "the run ended before the write it was meant to die in"
    assert _cli("run", "--resume", str(cut)).wait() == 0
    _assert_identical(cut, whole)


def _assert_identical(cut: Path, whole: Path) -> None:
    assert _records(cut) == _records(whole), "a resumed run logged other numbers than the uninterrupted one"
    for a, b in zip(_final(cut), _final(whole), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(_members(cut), _members(whole), strict=True):  # the report's matrices, every probe step
        assert (a / MATRICES).read_bytes() == (b / MATRICES).read_bytes()


def _members(path: Path) -> list[Path]:
    return sorted(path.glob("seed-*")) or [path]


def _records(path: Path) -> list[list[dict]]:
    return [[json.loads(line) for line in (m / "metrics.jsonl").read_text().splitlines()] for m in _members(path)]


def _final(path: Path) -> list[dict]:
    out = []
    for m in _members(path):
        last = sorted((m / "checkpoints").glob("step-*.pt"))[-1]
        out.append(torch.load(last, weights_only=True)["model"])
    return out


def _where(path: Path) -> str:
    if any(path.rglob(".step-*")) or any(path.glob(".ensemble.pt.*")) or any(path.rglob(f".{MATRICES}.*")):
        return "during"
    steps = [int(p.stem.split("-")[1]) for p in path.rglob("step-*.pt")]
    return "before" if max(steps, default=0) == 0 else "between"


def kill_and_resume(setting: tuple, tmp: Path, kills: int, rng: random.Random, span: float | None = None) -> list:
    """Run ``setting`` uninterrupted and once more killed ``kills`` times at random moments within ``span`` seconds
    of each start (default: 90% of the uninterrupted run's wall time); assert both end identical; return where each
    kill landed."""
    whole = tmp / "whole"
    if not whole.exists():
        start = time.time()
        assert _cli(*_args(setting, whole)).wait() == 0
        span = span or 0.9 * (time.time() - start)
    span = span or 5.0
    cut, landed = tmp / "cut", []
    shutil.rmtree(cut, ignore_errors=True)
    args = _args(setting, cut)
    for _ in range(kills):
        proc = _cli(*args)
        time.sleep(rng.uniform(0.3, max(span, 0.5)))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (cut / "config.toml").exists() and not (cut / "group.json").exists():
            shutil.rmtree(cut, ignore_errors=True)  # killed before the run directory was made: run it again
            landed.append("before the directory")
            continue
        landed.append(_where(cut))
        args = ["run", "--resume", str(cut)]
    if not (cut / "summary.json").exists():
        assert _cli(*args).wait() == 0
    _assert_identical(cut, whole)
    return landed


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> tuple[Path, float]:
    """A folder holding the uninterrupted short run (``whole``) that the default-suite kills compare with, and how
    long that run took (kills land within it, however fast the machine)."""
    tmp = tmp_path_factory.mktemp("short")
    start = time.time()
    assert _cli(*_args(SHORT, tmp / "whole")).wait() == 0
    return tmp, time.time() - start


def test_killed_twice_and_resumed_is_identical(short):
    tmp, duration = short
    landed = kill_and_resume(SHORT, tmp, kills=2, rng=random.Random(0), span=0.8 * duration)
    assert landed, "the run ended before any kill"


@pytest.mark.parametrize("kind, n", [("checkpoint", 3), ("metrics", 5), ("matrices", 2)])
def test_dying_in_the_middle_of_a_write_then_resuming_is_identical(short, kind, n):
    die_during_write_and_resume(SHORT, short[0], kind, n)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
def test_kill_stress(tmp_path, name):
    rng = random.Random(name)
    landed = []
    for trial in range(3):
        landed += kill_and_resume(SETTINGS[name], tmp_path / f"trial-{trial}", kills=3, rng=rng)
    for kind, n in (("checkpoint", 2), ("checkpoint", 5), ("metrics", 3), ("metrics", 9), ("matrices", 2)):
        die_during_write_and_resume(SETTINGS[name], tmp_path / "trial-0", kind, n)
        landed.append(f"during the {kind} write")
    print(name, "kills:", len(landed), {w: landed.count(w) for w in set(landed)})
    assert len(landed) >= 9
