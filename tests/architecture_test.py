"""The shape of the package: layers by folder, no import cycles, the commands' console entry
points, and importing anything has no side effects (environment, matplotlib backend).

Layers, each importing only from the ones below it: multihost, atomic_files < core/ <
config_lib (it validates a config against core/methods' table) < data/ < trainer/ < cli (what the commands and main share) < commands/, main.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "comatch_jax"
# What each layer must never import: the layers above it.
FOLDERS = ("core", "data", "trainer", "commands")
TOP = ("cli", "main")
FORBIDDEN = {
    "config_lib": FOLDERS[1:] + TOP,
    "multihost": FOLDERS + TOP,
    "atomic_files": FOLDERS + TOP,
    "core": FOLDERS[1:] + TOP,
    "data": FOLDERS[2:] + TOP,
    "trainer": FOLDERS[3:] + TOP,
    "commands": ("main",),
}
# The console entry points: (script, module below comatch_jax, function).
CONSOLE_SCRIPTS = re.findall(
    r'"(comatch-[\w-]+)=comatch_jax\.([\w.]+):(\w+)"',
    (PACKAGE.parent / "setup.py").read_text(),
)
COMMANDS = tuple(module for _, module, _ in CONSOLE_SCRIPTS)


def module_names() -> list[str]:
    """Every module of the package, dotted below comatch_jax ('config_lib', 'core.losses')."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(parts))
    return names


def imports_of(name: str, modules: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its source (top level, functions,
    TYPE_CHECKING blocks), from its AST."""
    path = PACKAGE / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / name.replace(".", "/") / "__init__.py"
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
                module = "comatch_jax" + ("." + module if module else "")
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            # `from pkg import submodule` names the submodule; the package itself counts only
            # when a name other than a submodule is taken from it.
            names_module = any(t[len("comatch_jax.") :] not in modules for t in submodules)
            targets = ([module] if names_module else []) + submodules
        else:
            continue
        for target in targets:
            if target.startswith("comatch_jax."):
                target = target[len("comatch_jax.") :]
                if target in modules and target != name:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = set(module_names())
    return {name: imports_of(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_find_cycle_finds_one_and_only_then():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_the_import_graph_is_read_from_the_source():
    graph = import_graph()
    assert {"trainer.saved_runs", "data.pipeline", "core.train_step"} <= graph["trainer.train"]
    assert {"trainer.saved_runs", "core.evaluation"} <= graph["commands.ema_model"]


def test_comatch_jax_modules_have_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def layer_violations(graph: dict[str, set[str]], layer: str) -> list[str]:
    """'module -> imported' for every import of `layer` (a folder or a top-level module)
    from a layer it must not use (FORBIDDEN)."""
    forbidden = FORBIDDEN[layer]
    return [
        f"{module} -> {target}"
        for module in sorted(graph)
        if module == layer or module.startswith(layer + ".")
        for target in sorted(graph[module])
        if target.split(".")[0] in forbidden
    ]


def test_layer_violations_are_found():
    graph = {"core.a": {"core.b", "data.x"}, "data.x": {"commands.c"}, "commands.c": {"core.a"}}
    assert layer_violations(graph, "core") == ["core.a -> data.x"]
    assert layer_violations(graph, "data") == ["data.x -> commands.c"]
    assert layer_violations(graph, "commands") == []


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_each_layer_imports_only_from_the_layers_below(layer):
    violations = layer_violations(import_graph(), layer)
    assert not violations, f"{layer} must not import {FORBIDDEN[layer]}: {violations}"


def test_commands_never_reach_the_training_loop():
    """The commands read a run through trainer.saved_runs, never through the loop."""
    graph = import_graph()
    for module in COMMANDS + ("commands.ema_model", "trainer.saved_runs"):
        assert "trainer.train" not in reachable(graph, module), module


def test_every_console_script_is_a_command_run_as_a_module_too():
    assert [script for script, _, _ in CONSOLE_SCRIPTS] == [
        "comatch-predict",
        "comatch-request-labels",
        "comatch-answer-from-truth",
        "comatch-analyze",
        "comatch-probe",
    ]
    for script, module, function in CONSOLE_SCRIPTS:
        assert module.startswith("commands.") and script == "comatch-" + module[9:].replace(
            "_", "-"
        )
        source = (PACKAGE / (module.replace(".", "/") + ".py")).read_text()
        assert f"def {function}() -> None:" in source
        assert source.rstrip().endswith(f'if __name__ == "__main__":\n    {function}()'), module


def test_importing_every_module_changes_no_environment_and_no_matplotlib_backend():
    # Third-party libraries first (TensorFlow and JAX set variables of their own on import),
    # then every comatch_jax module: only what comatch_jax itself does is compared.
    code = (
        "import importlib, os, sys\n"
        "import jax, flax, optax, orbax.checkpoint, clu.metrics, ml_collections, matplotlib\n"
        "import tensorflow, tensorflow_datasets, clu.metric_writers, clu.periodic_actions\n"
        "before = dict(os.environ)\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module('comatch_jax' + ('.' + name if name else ''))\n"
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}\n"
        "assert not changed, f'os.environ changed on import: {sorted(changed)}'\n"
        "backend = matplotlib.rcParams._get_backend_or_none()\n"
        "assert backend is None, f'matplotlib backend selected on import: {backend}'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(PACKAGE.parent)
    env.pop("COMATCH_JAX_KEEP_XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", code, "", *module_names()],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(PACKAGE.parent),
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_entry_points_apply_the_cpu_flag_themselves(monkeypatch):
    from comatch_jax import cli

    monkeypatch.delenv("COMATCH_JAX_KEEP_XLA_FLAGS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    applied = cli.apply_default_cpu_flags()
    import jaxlib

    measured = tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) == cli.MEASURED_JAXLIB
    assert applied == measured
    if measured:
        assert os.environ["XLA_FLAGS"].split() == [
            "--xla_force_host_platform_device_count=2",
            cli.DEFAULT_CPU_FLAG,
        ]
        assert not cli.apply_default_cpu_flags()  # already set: left alone
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("COMATCH_JAX_KEEP_XLA_FLAGS", "1")
    assert not cli.apply_default_cpu_flags() and os.environ["XLA_FLAGS"] == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_command_modules_have_distinct_names_from_library_modules(command):
    names = [n.rpartition(".")[2] for n in module_names()]
    command = command.rpartition(".")[2]
    assert command in names
    # No library module differs from a command by one letter or word order.
    similar = [
        n
        for n in names
        if n != command
        and sorted(n.rstrip("s").split("_")) == sorted(command.rstrip("s").split("_"))
    ]
    assert not similar, (command, similar)
