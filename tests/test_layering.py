"""The package's layering, read statically from the source (every import, function-level ones included):
evaluation and the weight readers do not build on training or the demo, training does not build on the demo,
weights are read in one place, and library code leaves process-wide settings (cwd, thread count) to entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "varianttrain"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


SOURCES = _sources()


def _imports(name: str) -> set[str]:
    """The project modules `name` imports directly (`from a.b import c` counts a.b, and a.b.c when c is a module)."""
    found: set[str] = set()
    for node in ast.walk(SOURCES[name]):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(SOURCES)
    return found - {name}


def _closure(roots: set[str]) -> dict[str, list[str]]:
    """Every project module reachable from `roots`, each with one import chain that reaches it."""
    chains = {r: [r] for r in roots}
    todo = list(roots)
    while todo:
        current = todo.pop()
        for dep in sorted(_imports(current)):
            if dep not in chains:
                chains[dep] = chains[current] + [dep]
                todo.append(dep)
    return chains


def _package(prefix: str) -> set[str]:
    return {m for m in SOURCES if m == prefix or m.startswith(prefix + ".")}


@pytest.mark.parametrize("layer, forbidden", [
    ("varianttrain.evaluation", ("varianttrain.training", "varianttrain.demo", "varianttrain.tasks")),
    ("varianttrain.checkpoints", ("varianttrain.training", "varianttrain.demo", "varianttrain.evaluation",
                                  "varianttrain.export", "varianttrain.tasks")),
    ("varianttrain.data", ("varianttrain.training", "varianttrain.demo", "varianttrain.tasks")),
    ("varianttrain.training", ("varianttrain.demo", "varianttrain.tasks")),
    ("varianttrain.export", ("varianttrain.training.runner", "varianttrain.training.tasks", "varianttrain.demo")),
])
def test_layer_does_not_reach(layer, forbidden):
    roots = _package(layer)
    assert roots, f"no modules under {layer}"
    chains = _closure(roots)
    bad = {m: chain for m, chain in chains.items() if any(m == f or m.startswith(f + ".") for f in forbidden)}
    assert not bad, "\n".join(" -> ".join(chain) for chain in bad.values())


def test_the_scan_sees_imports():
    """The checks above would pass vacuously if the scan missed imports: it must find known edges."""
    assert "varianttrain.checkpoints" in _imports("varianttrain.evaluation.runner")
    assert "varianttrain.demo.tasks" in _imports("varianttrain.tasks")
    assert "varianttrain.training.runner" in _closure({"varianttrain.demo.pipeline"})  # a function-level import


def _file_reads(name: str) -> list[int]:
    """Line numbers of `torch.load(...)` and safetensors `load_file(...)` / `safe_open(...)` calls in a module."""
    lines = []
    for node in ast.walk(SOURCES[name]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_torch_load = isinstance(func, ast.Attribute) and func.attr == "load" and \
            isinstance(func.value, ast.Name) and func.value.id == "torch"
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if is_torch_load or called in ("load_file", "safe_open"):
            lines.append(node.lineno)
    return lines


def test_files_are_read_only_by_the_checkpoint_readers():
    """Weights are read in varianttrain.checkpoints; the one other torch.load reads the data layer's token arrays."""
    allowed = _package("varianttrain.checkpoints") | {"varianttrain.data.datamodule"}  # idx.pt / labels.pt
    offenders = {m: lines for m in SOURCES if m not in allowed and (lines := _file_reads(m))}
    assert not offenders, f"files read outside varianttrain.checkpoints (module: lines): {offenders}"
    assert _file_reads("varianttrain.checkpoints.files"), "the scan must see the readers' own torch.load"


def test_one_definition_of_each_reader_and_loader():
    """Each weight reader and the resumable loader is defined exactly once in the package."""
    names = {"load_var", "load_vqvae", "load_var_with_metadata", "load_export", "load_exported_var",
             "load_exported_vqvae", "load_demo_extractor", "load_var_weights", "load_vqvae_weights", "read_file",
             "EpochPermutationSampler", "ResumableDataLoader"}
    where: dict[str, list[str]] = {n: [] for n in names}
    for module, tree in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                where[node.name].append(module)
    assert {n: len(m) for n, m in where.items()} == dict.fromkeys(names, 1), where
    assert all(m[0].startswith("varianttrain.checkpoints.") for n, m in where.items() if n.startswith(("load", "read")))
    assert where["ResumableDataLoader"] == where["EpochPermutationSampler"] == ["varianttrain.data.resumable_loader"]


def _calls_to(tree: ast.AST, owner: str, attr: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr and isinstance(n.func.value, ast.Name) and n.func.value.id == owner]


def test_process_wide_settings_only_in_entry_points():
    """No os.chdir anywhere; torch.set_num_threads only inside a command-line `main()`."""
    chdir = {m: [c.lineno for c in _calls_to(tree, "os", "chdir")] for m, tree in SOURCES.items()}
    assert not {m: lines for m, lines in chdir.items() if lines}
    outside_main = {}
    for module, tree in SOURCES.items():
        in_main = {id(c) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "main"
                   for c in _calls_to(f, "torch", "set_num_threads")}
        lines = [c.lineno for c in _calls_to(tree, "torch", "set_num_threads") if id(c) not in in_main]
        if lines:
            outside_main[module] = lines
    assert not outside_main, f"torch.set_num_threads outside a main(): {outside_main}"
    assert _calls_to(SOURCES["varianttrain.demo.pipeline"], "torch", "set_num_threads"), "the scan must see main()'s"
