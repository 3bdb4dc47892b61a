"""Speed and memory of `toyformer analyze` (spec §8) on the bundled Wikipedia sample, each case in its own process
so that its peak resident memory is its own:

- speed: 1,000 documents through a 6-layer, 12-head, 384-wide BERT (random weights from a config, WordPiece
  vocabulary of 30,522 trained on the corpus; or ``--model DIR``, a local pretrained model), topics cached
  beforehand: the target is under 5 minutes on 2 CPU cores.
- scale: the corpus once and ten times over (``corpus.repeat``), topics fitted from scratch in one LDA pass and
  every document's attention measured, through a 2-layer, 128-wide model: peak memory should not grow with the
  corpus (documents and LDA passes stream; only vocabulary-sized state is kept).

Usage: python benchmarks/text_analysis.py [--model DIR] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def random_bert(folder: Path, layers: int, heads: int, width: int, vocab_size: int) -> Path:
    """A BERT with random weights and a WordPiece tokenizer trained on wiki-vital: nothing is downloaded."""
    import torch
    import transformers
    from tokenizers import BertWordPieceTokenizer

    from toyformer.config import CorpusConfig
    from toyformer.data.text import documents

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator((d.text for d in documents(CorpusConfig())), vocab_size=vocab_size)
    tokenizer = transformers.BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
    results: dict = {"machine": platform.machine(), "threads": args.threads}

    model = args.model or random_bert(work / "bert-6x12x384", 6, 12, 384, 30522)
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

    small = random_bert(work / "bert-2x4x128", 2, 4, 128, 30522)
    results["scale"] = {}
    for repeat in (1, 10):
        sets = ["--set", f"corpus.repeat={repeat}", "--set", "topics.passes=1"]
        docs = str(10033 * repeat)
        results["scale"][f"{repeat}x"] = measured([str(small), "--docs", docs, *sets], env, work / f"scale{repeat}")
    one, ten = results["scale"]["1x"], results["scale"]["10x"]
    results["scale"]["memory_ratio_10x_over_1x"] = round(ten["peak_memory_mb"] / one["peak_memory_mb"], 3)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
