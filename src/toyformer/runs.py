"""The run directory (design: contracts): config.toml, meta.json, metrics.jsonl, matrices.safetensors,
summary.json, report.html, checkpoints/, figures/. Every file but the append-only metrics log is written atomically
(temporary file, fsync, rename), so a crash or SIGKILL never leaves a corrupt checkpoint or summary; a run is
complete exactly when summary.json exists.

matrices.safetensors holds the matrices a family shows on its report page (W^V, attention patterns, ...) at every
probe step, each under the key ``STEP/NAME`` (the step zero-padded to eight digits). They are kept in memory from
one checkpoint to the next and written, the whole file at once, just before each checkpoint and at the end: a
checkpoint at step s never exists without the matrices of every probe step before s, which is what resume needs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import tempfile
import tomllib
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch

from toyformer.config import ConfigError, RunConfig

MATRICES = "matrices.safetensors"
# float16 keeps 11 bits: an entry's error is at most 2^-11 of itself plus 2^-25, under 0.05% of the largest entry
# when that is at least 2^-10; smaller or larger arrays (a tiny init, huge logits) stay float32
HALF_RANGE = (2.0**-10, 65504.0)


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """A checkpoint's tensors and plain containers, unpickled with ``weights_only``: opening a run directory someone
    shared never runs code from it. A truncated, tampered or foreign file is a ConfigError that names it."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them; the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by what is wrong
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        reason = f"it would call {code.group(1)}" if code else (text.strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{path}: not a checkpoint that loads safely ({reason[:160]}); it may be truncated or tampered with: "
            "delete it to resume from the one before, or rerun"
        ) from None


def atomic_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def compact(value: Any) -> np.ndarray:
    """An array as stored in matrices.safetensors: float16 where that loses nothing visible (see HALF_RANGE),
    float32 otherwise; integers as int32, booleans as they are."""
    x = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return np.ascontiguousarray(x, dtype=np.int32)
    x = x.astype(np.float32)
    finite = np.abs(x[np.isfinite(x)])
    top = float(finite.max()) if finite.size else 0.0
    small, large = HALF_RANGE
    return np.ascontiguousarray(x.astype(np.float16) if small <= top <= large else x)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    names = ["toyformer", "torch", "numpy", "pydantic", "matplotlib"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def default_dir(cfg: RunConfig, tag: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return root / f"{cfg.name.replace('/', '-')}-{tag}-{stamp}"


class Run:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._pending: dict[str, np.ndarray] = {}  # matrices of probe steps since the last write

    # -- creation and loading ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, out: Path | None = None, root: Path = Path("runs")) -> Run:
        out = Path(out) if out is not None else default_dir(cfg, f"s{cfg.seed}", root)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: the directory exists and is not empty; pick a new one or --resume it")
        run = cls(out)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        atomic_write(out / "config.toml", cfg.dump())
        meta = {
            "status": "running",
            "name": cfg.name,
            "seed": cfg.seed,
            "device": cfg.device,
            "git_commit": _git_commit(),
            "versions": _versions(),
            "torch_threads": torch.get_num_threads(),
            "started": _now(),
        }
        run.write_meta(meta)
        return run

    @classmethod
    def open(cls, path: Path) -> Run:
        run = cls(Path(path))
        if not (run.path / "config.toml").is_file():
            raise ConfigError(f"{path}: not a run directory (no config.toml)")
        return run

    def raw_config(self) -> dict[str, Any]:
        """config.toml as written (``toyformer.tasks.run_config`` validates it as its task's class)."""
        try:
            raw = tomllib.loads((self.path / "config.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{self.path / 'config.toml'}: unreadable ({e}); the run directory is damaged") from None
        return raw

    def _json(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.path / name}: unreadable ({e}); the run directory is damaged") from None

    @property
    def complete(self) -> bool:
        return (self.path / "summary.json").is_file()

    # -- meta and summary --------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return self._json("meta.json")

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write(self.path / "meta.json", json.dumps(meta, indent=2))

    def update_meta(self, **fields: Any) -> None:
        self.write_meta(self.meta() | fields)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.flush_matrices()
        atomic_write(self.path / "summary.json", json.dumps(summary, indent=2))
        self.update_meta(status="complete", finished=_now())

    def summary(self) -> dict[str, Any]:
        return self._json("summary.json")

    # -- metrics -----------------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """All complete records (a line cut short by a kill is skipped)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def truncate_metrics(self, before_step: int) -> None:
        """Keep only the records of steps before ``before_step`` (a resumed run recomputes the rest)."""
        keep = [r for r in self.metrics() if r["step"] < before_step]
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep))

    def truncate_probes(self, before_step: int) -> None:
        """Keep only what the probes of steps before ``before_step`` wrote: metrics and matrices."""
        self.truncate_metrics(before_step)
        self._pending.clear()
        stored = self._stored()
        keep = {k: v for k, v in stored.items() if int(k.split("/", 1)[0]) < before_step}
        if len(keep) < len(stored):
            self._write_matrices(keep)

    # -- matrices ----------------------------------------------------------------------------------------------
    def add_matrices(self, step: int, arrays: dict[str, Any]) -> None:
        """The matrices of a probe step, written with the next checkpoint (or at the end)."""
        for name, value in arrays.items():
            self._pending[f"{step:08d}/{name}"] = compact(value)

    def flush_matrices(self) -> None:
        if self._pending:
            self._write_matrices(self._stored() | self._pending)
            self._pending.clear()

    def _stored(self) -> dict[str, np.ndarray]:
        path = self.path / MATRICES
        if not path.is_file():
            return {}
        try:
            return safetensors.numpy.load(path.read_bytes())
        except Exception as e:  # a foreign or damaged file: safetensors raises its own error types
            raise ConfigError(f"{path}: unreadable ({str(e)[:120]}); the run directory is damaged") from None

    def _write_matrices(self, tensors: dict[str, np.ndarray]) -> None:
        ordered = dict(sorted(tensors.items()))
        atomic_write(self.path / MATRICES, safetensors.numpy.save(ordered, metadata={"format": "toyformer-matrices"}))

    def matrices(self) -> dict[int, dict[str, np.ndarray]]:
        """Probe step → name → the matrix stored at that step (only what has been written)."""
        out: dict[int, dict[str, np.ndarray]] = {}
        for key, value in sorted(self._stored().items()):  # safetensors orders a file by dtype, not by name
            step, name = key.split("/", 1)
            out.setdefault(int(step), {})[name] = value
        return dict(sorted(out.items()))

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        self.flush_matrices()  # first: a checkpoint never exists without the matrices of the steps before it
        atomic_save(self.path / "checkpoints" / f"step-{step:08d}.pt", state)

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / "checkpoints").glob("step-*.pt"))

    def load_checkpoint(self, path: Path | None = None) -> dict[str, Any] | None:
        paths = self.checkpoints()
        if path is None and not paths:
            return None
        return safe_load(path or paths[-1])
