"""Hook points: named activations of a model that can be read (a cache) or replaced (ablation, patching).

A ``HookPoint`` is an identity module placed where an activation is computed; its name is its path in the model
(``blocks.0.attn.hook_pattern``), so names are stable as long as the architecture is. ``Hooked`` gives a model
``hooks(...)`` (a context that attaches functions for its duration), ``run_with_hooks`` and ``run_with_cache``, in
the spirit of TransformerLens. A hook function gets ``(activation, name)`` and returns a replacement or None (read
only). With nothing attached a hook point costs one Python call, and the model trains as a plain module (also under
``torch.func.vmap`` in stacked ensembles). A model whose training forward is not the one hooks should see (the fast
path of TF(M, H, d, D)) names another in ``hooked_forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from toyformer.config import ConfigError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.fns: list[HookFn] = []
        self.name = ""  # set by Hooked.name_hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self.name)
            if out is not None:
                x = out
        return x


class Hooked(nn.Module):
    """A model with hook points. Call ``name_hooks()`` at the end of ``__init__``."""

    def name_hooks(self) -> None:
        self.hook_dict = {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}
        for name, m in self.hook_dict.items():
            m.name = name

    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def _points(self, names: Iterable[str]) -> list[HookPoint]:
        unknown = [n for n in names if n not in self.hook_dict]
        if unknown:
            raise ConfigError(f"hook {unknown[0]!r} does not exist; the model's hooks are {', '.join(self.hook_dict)}")
        return [self.hook_dict[n] for n in names]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach ``(name, fn)`` pairs for the duration of the block."""
        points = self._points([name for name, _ in fwd_hooks])
        for point, (_, fn) in zip(points, fwd_hooks, strict=True):
            point.fns.append(fn)
        try:
            yield
        finally:
            for point, (_, fn) in zip(points, fwd_hooks, strict=True):
                point.fns.remove(fn)

    def hooked_forward(self, *args, **kwargs):
        """The forward pass that runs the hook points: the model's own by default."""
        return self(*args, **kwargs)

    def run_with_hooks(self, *args, fwd_hooks: list[tuple[str, HookFn]], **kwargs):
        with self.hooks(fwd_hooks):
            return self.hooked_forward(*args, **kwargs)

    def run_with_cache(self, *args, names: Iterable[str] | None = None, **kwargs) -> tuple[torch.Tensor, dict]:
        """The model's output and the activations at ``names`` (default: every hook point), detached."""
        names = list(self.hook_dict if names is None else names)
        cache: dict[str, torch.Tensor] = {}

        def keep(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach()

        with self.hooks([(n, keep) for n in names]):
            out = self.hooked_forward(*args, **kwargs)
        return out, cache
