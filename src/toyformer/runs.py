"""The run directory (design: contracts): config.toml, meta.json, metrics.jsonl, summary.json, checkpoints/,
figures/. Every file but the append-only metrics log is written atomically (temporary file, fsync, rename), so a
crash or SIGKILL never leaves a corrupt checkpoint or summary; a run is complete exactly when summary.json exists.
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

import torch

from toyformer.config import ConfigError, RunConfig


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

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        atomic_save(self.path / "checkpoints" / f"step-{step:08d}.pt", state)

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / "checkpoints").glob("step-*.pt"))

    def load_checkpoint(self, path: Path | None = None) -> dict[str, Any] | None:
        paths = self.checkpoints()
        if path is None and not paths:
            return None
        return safe_load(path or paths[-1])
