"""Training speed of E5 (paper 2: the simplified TF(M, H, d, D), joint SGD, full batch of 9,000 chains of length
100, code-ce loss), on the same cores, each implementation in its own process so peak memory is its own:

- reference: the same model written as the maths reads: banded RPE attention over whole sequences ((B, L+1, L+1)
  per head), L2 normalisation, the selector kernel at every position, the classifier softmax
  (``toyformer.induction.model.reference_predict``).
- eager: a vectorised eager step without the sharing: the copier on every position's window (unfold), inner
  products and the kernel per position (``make_plan(..., path="positions")``).
- toyformer: the induction/e5 recipe through the library (distinct windows, the pair table, grouped keys).

Data generation (10,000 chains) and the plan are inside the timed region of toyformer's number. Writes JSON with
steps/s of each, the ratios (also against the official code's 1.1 steps/s) and peak resident memory. Usage:
    python benchmarks/induction_speed.py [--steps 2000] [--reference-steps 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from toyformer.bench import machine, write

OFFICIAL_STEPS_PER_S = 1.1


def toyformer_steps_per_s(steps: int) -> float:
    from toyformer.induction.experiment import InductionExperiment
    from toyformer.tasks import load

    start = time.perf_counter()
    exp = InductionExperiment(
        load("induction/e5", ["theory.kernels=10"])
    )  # samples the chains and builds the plan, timed
    plan = exp.batch(0)
    for _ in range(steps):
        loss = exp.loss(exp.model, plan)
        exp.optimizer.zero_grad()
        loss.backward()
        exp.optimizer.step()
    return steps / (time.perf_counter() - start)


def eager_steps_per_s(steps: int) -> float:
    import torch.nn.functional as F

    from toyformer.induction.chains import sample_batch
    from toyformer.induction.config import GIHModelConfig
    from toyformer.induction.model import GIHTransformer
    from toyformer.induction.plan import make_plan
    from toyformer.random import generator

    chains = sample_batch(9000, 3, (1, 2), 0.1, 100, generator(0, "bench-chains"))
    model = GIHTransformer(GIHModelConfig(), 3)
    plan = make_plan(chains.tokens, model.band, 3, path="positions")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(plan)[:, 0], plan.labels[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def reference_steps_per_s(steps: int) -> float:
    import torch.nn.functional as F

    from toyformer.induction.chains import sample_batch
    from toyformer.induction.config import GIHModelConfig
    from toyformer.induction.model import GIHTransformer, reference_predict
    from toyformer.random import generator

    chains = sample_batch(9000, 3, (1, 2), 0.1, 100, generator(0, "bench-chains"))
    model = GIHTransformer(GIHModelConfig(), 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    start = time.perf_counter()
    for _ in range(steps):
        y = reference_predict(model, chains.tokens)[:, 0]
        loss = F.cross_entropy(y, chains.tokens[:, -1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def _child(kind: str, steps: int, threads: int) -> dict:
    """Run one measurement in a fresh process: its own peak memory, no warm caches from the other."""
    code = (
        "import json, resource, torch, sys; sys.path.insert(0, 'benchmarks'); import induction_speed as b; "
        f"torch.set_num_threads({threads}); "
        f"r = b.{kind}_steps_per_s({steps}); "
        "print(json.dumps({'steps_per_s': r, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--reference-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ref = _child("reference", args.reference_steps, args.threads)
    eager = _child("eager", max(args.reference_steps, 10), args.threads)
    ours = _child("toyformer", args.steps, args.threads)
    out = machine(torch.device("cpu")) | {
        "setting": "induction/e5: simplified TF(3,3,3,2), SGD lr 1, full batch 9,000 × L 100, code-ce",
        "threads": args.threads,
        "reference_steps_per_s": ref["steps_per_s"],
        "eager_steps_per_s": eager["steps_per_s"],
        "e5_steps_per_s": ours["steps_per_s"],
        "speedup_vs_reference": ours["steps_per_s"] / ref["steps_per_s"],
        "speedup_vs_eager": ours["steps_per_s"] / eager["steps_per_s"],
        "speedup_vs_official_1.1_steps_per_s": ours["steps_per_s"] / OFFICIAL_STEPS_PER_S,
        "minutes_for_50000_steps": 50_000 / ours["steps_per_s"] / 60,
        "reference_peak_memory_mb": ref["peak_mb"],
        "eager_peak_memory_mb": eager["peak_mb"],
        "peak_memory_mb": ours["peak_mb"],
    }
    print(write(out, args.json))


if __name__ == "__main__":
    main()
