"""The shape of the package: one adapter reads Keras' private graph, no import cycle, one layer table.

- Only prunecli/structure/keras_graph.py may read private Keras graph attributes (a grep of the source).
- The import graph of `prunecli`, built from the source with function-local imports included, has no
  cycle.
- A custom layer plugs in by one `layers.register(...)`: it is then a target, understood by the
  channel graph, counted in FLOPs and shrunk.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

PACKAGE = Path(__file__).resolve().parent.parent / "prunecli"
ADAPTER = PACKAGE / "structure" / "keras_graph.py"

PRIVATE_NAMES = (
    "_keras_history",
    "_inbound_nodes",
    "_outbound_nodes",
    "_nodes_by_depth",
    "_flatten_layers",
    "_operation",
    "_layers",
    "_functional",
    "_outputs_struct",
    "_inputs_struct",
    "_self_tracked_trackables",
    "_is_graph_network",
    # attention layer internals (keras.layers.MultiHeadAttention, KerasHub blocks) and optimizer state
    "_num_heads",
    "_key_dim",
    "_value_dim",
    "_query_dense",
    "_key_dense",
    "_value_dense",
    "_output_dense",
    "_o_proj",
    "_self_attention_layer",
    "_use_gate",
    "_learning_rate",
    # KerasHub decoder internals (Llama/Mistral/Qwen: grouped-query attention, SwiGLU FFN)
    "_num_query_heads",
    "_num_key_value_heads",
    "_feedforward_gate_dense",
    "_feedforward_intermediate_dense",
    "_feedforward_output_dense",
    # calling one functional node alone (calibration's cached passes)
    "_call_context_args",
    "_standardize_inputs",
)
# read as an attribute (x._keras_history) or by name (getattr(x, "_keras_history")); a subclass of a
# Keras layer setting its own inherited attribute (self._self_attention_layer) is not a read of Keras'
PRIVATE_GRAPH = re.compile(r"(?<!self)(\.|[\"'])(" + "|".join(PRIVATE_NAMES) + r")\b")


def test_only_the_adapter_reads_private_keras_graph_attributes():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ADAPTER:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE_GRAPH.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == [], "read the graph through prunecli.structure.keras_graph:\n" + "\n".join(offenders)


def test_the_adapter_itself_is_what_the_grep_looks_for():
    """The pattern finds the attributes where they are read (so the test above can fail)."""
    assert PRIVATE_GRAPH.search(ADAPTER.read_text(encoding="utf-8"))


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its source (function-local imports too)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            wanted = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in wanted:
            if target in modules and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(edges) > 30 and edges["prunecli.structure.channels"]  # the graph was read
    cycles = _cycles(edges)
    assert cycles == [], "TODO(lead): import cycles to break (function-local imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


# Floors, bottom to top (../shared/DESIGN.md): a module imports only modules of its own package or of a
# package on a lower floor. Packages on one floor do not import each other.
FLOORS = (
    ("base",),  # errors, results, messages, interrupts, runtime
    ("config",),
    ("structure",),
    ("selection", "io"),
    ("training", "calibration"),
    ("scoring",),
    ("removal",),
    ("outputs",),
    ("run",),
    ("face",),  # cli, __main__, the package's own __init__ (prunecli.prune, __version__)
)
BASE = {"errors", "results", "messages", "interrupts", "runtime"}
FLOOR_OF = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def _package(module: str) -> str:
    """The floor package of a dotted module name (prunecli.structure.channels -> structure)."""
    parts = module.split(".")[1:]
    first = parts[0] if parts else ""
    if first in BASE:
        return "base"
    if first in ("", "cli", "__main__"):
        return "face"
    return first


def _upward_imports(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = _package(source), _package(target)
            if a != b and not FLOOR_OF[b] < FLOOR_OF[a] and target != "prunecli":
                found.append(f"{source} ({a}) -> {target} ({b})")
    return found


def test_every_package_has_a_floor():
    assert {_package(name) for name in _modules()} <= set(FLOOR_OF)


def test_the_floor_check_finds_an_upward_import():
    assert _upward_imports({"prunecli.structure.surgery": {"prunecli.selection.policy"}}) == [
        "prunecli.structure.surgery (structure) -> prunecli.selection.policy (selection)"
    ]
    assert _upward_imports({"prunecli.io.paths": {"prunecli.selection.kernels"}})  # one floor: no import either way


def test_no_package_imports_upward():
    """A lower floor never imports a higher one, function-local imports included; so no loop between
    packages can form either (checked too, as the tools/package_floors.py script does)."""
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _upward_imports(edges) == []
    packages: dict[str, set[str]] = {}
    for source, targets in edges.items():
        packages.setdefault(_package(source), set()).update(
            _package(t) for t in targets if _package(t) != _package(source)
        )
    for package in list(packages.values()):
        for target in package:
            packages.setdefault(target, set())
    assert _cycles(packages) == []


# ---- one registration ------------------------------------------------------------------------------


def _custom_layer():
    import keras

    class ScaledDense(keras.layers.Layer):
        """A Dense with a fixed output scale: the kind of small custom layer a user writes."""

        def __init__(self, units, activation=None, scale=2.0, **kwargs):
            super().__init__(**kwargs)
            self.units, self.scale = units, scale
            self.activation = keras.activations.get(activation)

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x):
            return self.activation(self.scale * (x @ self.kernel) + self.bias)

        def get_config(self):
            act = keras.activations.serialize(self.activation)
            return {**super().get_config(), "units": self.units, "activation": act, "scale": self.scale}

    return ScaledDense


def test_a_custom_layer_plugs_in_by_one_registration():
    import keras

    from prunecli.config import build_config
    from prunecli.outputs.report import Timings
    from prunecli.removal import channels as shrink_step
    from prunecli.selection import kernels
    from prunecli.structure import channels, flops, layers, targets

    ScaledDense = _custom_layer()
    keras.utils.set_random_seed(0)

    def model():
        inp = keras.Input((6,))
        h = ScaledDense(8, activation="relu", name="custom")(inp)
        return keras.Model(inp, keras.layers.Dense(3, name="out")(h))

    before = model()
    assert [t.layer_name for t in targets.select(before)] == ["out"]  # unknown: not a target
    layers.register(ScaledDense, like="Dense")
    try:
        m = model()
        found = {t.layer_name: t for t in targets.select(m)}
        assert set(found) == {"custom", "out"} and found["custom"].shrinkable
        g = channels.build(m)
        assert [c.kind for c in g.calls if c.name == "custom"] == ["mixer"]
        macs = {row["layer"]: row["macs"] for row in flops.count(m)["layers"]}
        assert macs["custom"] == 6 * 8
        t = found["custom"]
        keep = np.ones(t.shape, bool)
        keep[:, [0, 3, 5]] = False
        kernels.apply_masks([t.variable], [keep])
        x = np.random.default_rng(0).standard_normal((4, 6)).astype("float32")
        want = np.asarray(m(x))
        config = build_config({"model_path": "m.keras", "granularity": "neuron", "sparsity": 0.5, "shrink": True})
        result = shrink_step.shrink(m, [t], None, None, config.seed, lambda _m: None, Timings(), False)
        assert result.model.get_layer("custom").kernel.shape == (6, 5)
        assert np.abs(np.asarray(result.model(x)) - want).max() < 1e-5
    finally:
        layers.unregister(ScaledDense)


def test_every_measured_slow_test_still_exists():
    """tests/measured_slow.txt marks tests slow by node id (conftest.py): an entry whose test was renamed
    or removed would silently mark nothing, so each must name a test function its file defines."""
    tests = Path(__file__).resolve().parent
    entries = [
        line.split("  #")[0].strip()
        for line in (tests / "measured_slow.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries
    for entry in entries:
        path, name = entry.split("::", 1)
        source = (tests.parent / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", source, re.M), entry
