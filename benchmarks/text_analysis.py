"""Speed and memory of `toyformer analyze` (docs/topic-structure.md §8) on the bundled Wikipedia sample, each case in
its own process so that its peak resident memory is its own:

- speed: 1,000 documents through a 6-layer, 12-head, 384-wide BERT (random weights from a config, WordPiece
  vocabulary of 30,522 trained on the corpus; or ``--model DIR``, a local pretrained model), topics cached
  beforehand: the target is under 5 minutes on 2 CPU cores.
- scale: the corpus once and ten times over (``corpus.repeat``: 10,033 and 100,330 documents), topics fitted from
  scratch in one LDA pass over all of it, and 1,000 and 10,000 documents' attention measured, through a 2-layer,
  128-wide model: peak memory should not grow with the corpus (documents and LDA passes stream; only
  vocabulary-sized state is kept).

Usage: python benchmarks/text_analysis.py [--model DIR] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from toyformer.bench import machine, write


def bert(folder: Path, layers: int, heads: int, width: int) -> Path:
    """Random weights, WordPiece vocabulary of 30,522 trained on wiki-vital: nothing is downloaded."""
    from toyformer.text.analysis import random_bert
    from toyformer.text.config import CorpusConfig
    from toyformer.text.corpus import documents

    texts = (d.text for d in documents(CorpusConfig()))
    return random_bert(folder, texts, vocab_size=30522, layers=layers, heads=heads, width=width)


def measured(args: list[str], env: dict, out: Path) -> dict:
    """`toyformer analyze …` in a child process: wall time, and the peak resident memory it records in meta.json."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "toyformer.cli", "analyze", *args, "--out", str(out)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    meta = json.loads((out / "meta.json").read_text())
    final = json.loads((out / "summary.json").read_text())["final"]
    return {"docs": final["docs"], "wall_s": round(wall, 1), "peak_memory_mb": meta["peak_memory_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a local pretrained model folder for the speed case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="toyformer-bench-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOYFORMER_CACHE=str(work / "cache"))
    results: dict = machine(torch.device("cpu")) | {"threads": args.threads}

    model = args.model or bert(work / "bert-6x12x384", 6, 12, 384)
    # topics fitted once beforehand: the speed case measures the analysis itself
    subprocess.run(
        [sys.executable, "-m", "toyformer.cli", "corpus", "topics"], env=env, check=True, stdout=subprocess.DEVNULL
    )
    speed = measured([str(model), "--docs", "1000"], env, work / "speed")
    results["speed"] = {
        "model": f"pretrained {model.name}" if args.model else "random 6x12x384",
        **speed,
        "target_s": 300,
    }

    small = bert(work / "bert-2x4x128", 2, 4, 128)
    results["scale"] = {}
    for repeat in (1, 10):
        sets = ["--set", f"corpus.repeat={repeat}", "--set", "topics.passes=1"]
        docs = str(1000 * repeat)
        results["scale"][f"{repeat}x"] = measured([str(small), "--docs", docs, *sets], env, work / f"scale{repeat}")
    one, ten = results["scale"]["1x"], results["scale"]["10x"]
    results["scale"]["memory_ratio_10x_over_1x"] = round(ten["peak_memory_mb"] / one["peak_memory_mb"], 3)
    print(write(results, args.json))


if __name__ == "__main__":
    main()
