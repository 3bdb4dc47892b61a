"""The benchmarks' one entry point: generators, S2/E5 steps/s, seed-ensemble scaling, probe overhead and peak memory
(and FLOP/s and bandwidth against the card's measured peaks on a GPU), as JSON. The same as `toyformer bench`:

    python benchmarks/bench.py [--quick] [--device cuda] --json out.json

topic_speed.py, induction_speed.py and text_analysis.py compare against reference implementations and time whole
commands in child processes; they share this module's JSON and machine description.
"""

import sys

from toyformer.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
