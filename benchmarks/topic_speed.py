"""Training speed of the S2 demo setting (regime B, cross-entropy, Adam, batch 40), data generation included.

Two implementations are timed in the same process on the same cores:
- reference: a straightforward eager PyTorch version of the official pipeline (a BERT-style layer: dense
  embedding + LayerNorm, Linear Q/K/V/O, explicit softmax attention at every position, decoder, cross-entropy
  with ignore_index; documents kept as Python lists and padded per batch by a collate function, as a DataLoader
  does). It trains the same parameters the official model trains.
- toyformer: the topic/s2 recipe through the library's own data stream and model (probes off).

Writes JSON with steps/s of each, the ratio, and peak resident memory. Usage:
    python benchmarks/topic_speed.py [--steps 1000] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from toyformer.bench import machine, peak_memory_mb, write
from toyformer.random import generator
from toyformer.tasks import load
from toyformer.topic.experiment import TopicExperiment
from toyformer.topic.lda import sample_documents
from toyformer.topic.masking import corrupt


class ReferenceLayer(nn.Module):
    def __init__(self, vocab: int = 104, d: int = 104):
        super().__init__()
        self.emb, self.type_vec, self.ln = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(d)), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.dec = nn.Linear(d, vocab)

    def forward(self, ids, attention_mask):
        h = self.ln(self.emb(ids) + self.type_vec)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores.masked_fill(~attention_mask[:, None, :], float("-inf"))
        return self.dec(self.o(torch.softmax(scores, -1) @ self.v(h)))


def reference_steps_per_s(steps: int, batch: int = 40) -> float:
    cfg = load("topic/s2")
    start = time.perf_counter()
    docs = sample_documents(cfg.data, cfg.data.train_docs, generator(0, "bench-docs"))
    b = corrupt(docs.ids, cfg.masking, 104, generator(0, "bench-mask"))
    # documents as Python lists, as files on disk would be read
    rows = [
        (ids[ids != 0].tolist(), lab[ids != 0].tolist(), w[ids != 0].tolist(), k[ids != 0].tolist())
        for ids, lab, w, k in zip(b.ids, b.labels, b.weight, b.key_bias, strict=True)
    ]
    model = ReferenceLayer()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        chunk = rows[(step * batch) % (len(rows) - batch) :][:batch]
        n = max(len(r[0]) for r in chunk)
        ids = torch.tensor([r[0] + [0] * (n - len(r[0])) for r in chunk])
        labels = torch.tensor(
            [[x if w else -100 for x, w in zip(r[1], r[2], strict=True)] + [-100] * (n - len(r[1])) for r in chunk]
        )
        keys = torch.tensor([[k == 0 for k in r[3]] + [False] * (n - len(r[3])) for r in chunk])
        logits = model(ids, keys)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 104), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def toyformer_steps_per_s(steps: int, recipe: str = "topic/s2", overrides: list[str] | None = None) -> float:
    start = time.perf_counter()
    cfg = load(recipe, ["theory.samples=10"] + (overrides or []))
    exp = TopicExperiment(cfg)  # builds the data (10,000 documents and their masks) inside the timed region
    for step in range(steps):
        loss = exp.loss(exp.model, exp.stream.batch(step))
        exp.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        exp.optimizer.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = reference_steps_per_s(max(args.steps // 10, 50))
    ours = toyformer_steps_per_s(args.steps)
    ours_stream = toyformer_steps_per_s(args.steps, overrides=["data.split=stream"])
    out = machine(torch.device("cpu")) | {
        "setting": "topic/s2: regime B, CE, Adam, batch 40, 10,000 fixed documents",
        "reference_steps_per_s": ref,
        "s2_steps_per_s": ours,
        "s2_stream_steps_per_s": ours_stream,
        "speedup_vs_reference": ours / ref,
        "speedup_vs_official_30_steps_per_s": ours / 30.0,
        "peak_memory_mb": peak_memory_mb(),
    }
    print(write(out, args.json))


if __name__ == "__main__":
    main()
