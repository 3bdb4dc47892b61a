"""The shape of the code (README, "How the code is laid out"), read from the imports of every module under src/:
function-local imports count as arrows too.

- The core knows no family: it imports only the core.
- A family imports the core and itself, never another family, except that topic builds on text (a topic run on a
  real corpus reads text's corpora and topic fits) and standard on induction (its chains, theory and reference
  predictors).
- The registry sits above the families and below the CLI, the benchmarks and sweeps; nothing imports what sits
  above it.
- Theory is pure functions: no model, plan, probe, training or report module.
- No import cycle; inside a family no arrow runs upwards in its layer order below.
- Nothing outside the registry compares a config's task.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
CORE = {"config", "claims", "runs", "random", "task", "train", "hooks", "report", "trackers"}
FAMILIES = {"topic", "induction", "text", "standard"}
TOP = {"cli", "bench", "sweep", "toyformer"}  # above the registry: they reach the families through it
MAY_IMPORT = {"topic": {"text"}, "standard": {"induction"}}  # family → the other families it builds on
# each family's modules, lowest layer first: a module imports only modules before it
LAYERS = {
    "topic": ["config", "batch", "lda", "masking", "stream", "model", "losses", "theory", "stages", "probes", "views"]
    + ["report", "experiment", "stacked"],
    "induction": ["config", "chains", "theory", "losses", "predictors", "plan", "model", "probes", "views", "report"]
    + ["experiment", "stacked"],
    "text": ["config", "pairs", "corpus", "topics", "probes", "report", "analysis"],
    "standard": ["config", "model", "lens", "roles", "views", "report", "experiment", "stacked"],
}
NOT_THEORY = {"model", "plan", "probes", "experiment", "stacked", "report", "stream", "stages", "views"}
THEORY = {"theory", "predictors"}


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every toyformer module a file imports (``from toyformer import x`` names the module toyformer.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("toyformer")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("toyformer"):
            out.add(node.module)
            if node.module == "toyformer":
                out |= {f"toyformer.{a.name}" for a in node.names}
    return out


def _modules() -> dict[str, set[str]]:
    files = {_name(p): p for p in (SRC / "toyformer").rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


GRAPH = _modules()


def _part(module: str) -> str:
    """The top-level part of toyformer a module belongs to (config, train, topic, cli, …)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "toyformer"


def test_every_module_has_a_place():
    placed = CORE | FAMILIES | TOP | {"tasks", "toyformer", "recipes", "sweeps"}
    assert {_part(m) for m in GRAPH} <= placed
    for family, layers in LAYERS.items():
        modules = {m.split(".")[2] for m in GRAPH if _part(m) == family and m.count(".") == 2}
        assert modules == set(layers), f"{family}: add new modules to LAYERS ({sorted(modules ^ set(layers))})"


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a house rule."""
    out = []
    for module, targets in sorted(graph.items()):
        part = _part(module)
        for target in sorted(targets):
            to = _part(target)
            if part in CORE and to not in CORE:
                out.append(f"core module {module} imports {target}")
            if part in FAMILIES and not (to in CORE or to == part or to in MAY_IMPORT.get(part, set())):
                out.append(f"family module {module} imports {target}")
            if part not in TOP and to in (*TOP, "tasks") and not (part == "tasks" and to == "tasks"):
                out.append(f"{module} imports {target}, which sits above it")
            if part == "sweep" and to in ("cli", "bench"):
                out.append(f"{module} imports {target}, which sits above it")
            if part in FAMILIES and module.rsplit(".", 1)[-1] in THEORY:
                if to in ("train", "runs") or target.rsplit(".", 1)[-1] in NOT_THEORY:
                    out.append(f"theory {module} imports {target}")
            if part in FAMILIES and to == part:
                layers = LAYERS[part]
                if layers.index(target.split(".")[2]) >= layers.index(module.split(".")[2]):
                    out.append(f"{module} imports {target}, a module above it in {part}'s layers")
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return [*path, m, t]
            if t not in state and (found := visit(t, [*path, m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_no_arrow_crosses_the_house_rules():
    assert violations(GRAPH) == []


def test_no_import_cycle():
    assert cycle(GRAPH) is None


def test_only_the_registry_dispatches_on_the_task():
    pattern = re.compile(r"""\.task\s*(==|!=|\bin\b|\bnot in\b)|\[["']task["']\]\s*(==|!=)|get\(["']task["']""")
    for path in (SRC / "toyformer").rglob("*.py"):
        if _name(path) == "toyformer.tasks":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(SRC)}:{n}: {line.strip()}"


@pytest.mark.parametrize(
    "arrow",
    [
        ("toyformer.runs", "toyformer.topic.config"),  # the core importing a family
        ("toyformer.induction.probes", "toyformer.topic.lda"),  # a family importing another
        ("toyformer.text.corpus", "toyformer.topic.config"),  # text may not build on topic
        ("toyformer.topic.theory", "toyformer.topic.model"),  # theory importing a model
        ("toyformer.induction.chains", "toyformer.induction.theory"),  # an arrow upwards in a family
        ("toyformer.train.seeds", "toyformer.tasks"),  # the core reaching for the registry
        ("toyformer.tasks", "toyformer.sweep.spec"),  # the registry reaching for a sweep
        ("toyformer.sweep.local", "toyformer.cli"),  # a sweep reaching for the CLI
    ],
)
def test_the_rules_catch_a_planted_violation(arrow):
    module, target = arrow
    assert violations(GRAPH | {module: GRAPH[module] | {target}})


def test_a_planted_cycle_is_found():
    planted = GRAPH | {"toyformer.config": GRAPH["toyformer.config"] | {"toyformer.claims"}}
    assert cycle(planted) is not None
