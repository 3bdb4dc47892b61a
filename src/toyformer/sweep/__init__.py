"""Sweeps: a grid of cells over a base recipe, each cell a seed group, and the theory's prediction drawn over the
grid (phase diagrams). ``spec`` reads a sweep and lists its cells, ``local`` trains them in this process, ``results``
gathers ``results.csv`` and ``summary.json``, ``figures`` draws the phase diagrams."""
