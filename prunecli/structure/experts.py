"""KerasHub's mixture-of-experts decoders (Mixtral, Qwen-MoE, Qwen3-MoE, GPT-OSS): feed-forward units
inside each expert, scored, masked and removed (`-g neuron`, `--target params=F`).

Each block's experts live in one weight bank (MixtralMoeExperts, QwenMoeExperts, Qwen3MoeExperts,
GptOssExperts): every expert's kernels stacked on a leading expert axis, all experts computed on every
token and weighted by the router. Unit j of expert e is, by bank (BANKS):

- Mixtral: gate[e, :, j], up[e, :, j], down[e, j, :]; out_e = down_e(silu(gate_e x) * up_e x).
- Qwen-MoE, Qwen3-MoE: one fused kernel (E, hidden, 2I) split in halves, gate[e, :, j] and up[e, :, I + j],
  and down[e, j, :]; out_e = down_e(up_e x * silu(gate_e x)). The router and Qwen-MoE's shared expert
  (a plain SwiGLU beside the bank) stay whole.
- GPT-OSS: a fused kernel with gate and up interleaved, gate[e, :, 2j], up[e, :, 2j + 1], their biases
  entries 2j and 2j + 1 of gate_up_proj_bias[e], and down[e, j, :]; out_e = down_e((clip(up) + 1) *
  g * sigmoid(1.702 g)) + down_bias_e, g = clip(gate x + b_gate, max=7). With the gate's column and bias
  zero, g = 0 and the unit adds exactly 0 (and so with its down row zero, whatever the rest); the down
  bias is per expert, not per unit, and stays.

So a unit whose slices are all zero adds nothing (silu(0) = 0), and removing it computes the same.

One count for every expert of the model. The bank is one stacked tensor, so every expert of a block must
keep as many units as the others; and KerasHub's MoE backbones build every block's bank from one config
value (Mixtral's and GPT-OSS's `intermediate_dim`, the Qwens' `moe_intermediate_dim`), so every block must
keep as many as the others too. Each expert keeps its own best units (unit j of one expert has nothing to
do with unit j of another: removing the same indices in every expert would rank unrelated units as one):
the run's selection (layer-wise or global) says how many units go in all, and `even` turns that into
round(removed / experts) per expert, each expert dropping its lowest-scored. The shrunk model is then the
user's own class built again from its config with the smaller size (as structure/stacks builds it with
fewer blocks), every kept unit's slices copied in: it loads without prunecli, and generate() is KerasHub's.

Scores are read from the weights (magnitude, l1/l2 norms, random): a unit's slices are views of the
stacked variables (FlatView, experts side by side as one Dense-like axis of E*I units), which the
gradient and activation scorers, reading whole variables or a layer's input, do not take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunecli.errors import InputError
from prunecli.structure import keras_graph, stacks


@dataclass(frozen=True)
class Part:
    """Where a bank variable holds unit j of every expert: along `axis` (0 is the expert axis), at
    `half` * I + `stride` * j + `shift` (I the expert's units). A bias over units is `bias`."""

    attribute: str
    axis: int
    half: int = 0
    stride: int = 1
    shift: int = 0
    bias: bool = False

    def columns(self, size: int, units=None) -> list[int]:
        """The entries along `axis` of these units (all `size` without)."""
        chosen = range(size) if units is None else units
        return [self.half * size + self.stride * j + self.shift for j in chosen]


@dataclass(frozen=True)
class BankLayout:
    """A bank class's parts and the backbone's config argument for its experts' intermediate size."""

    size_argument: str
    parts: tuple[Part, ...]


_MIXTRAL = BankLayout(
    "intermediate_dim",
    (
        Part("_expert_feedforward_gate_dense", 2),
        Part("_expert_feedforward_intermediate_dense", 2),
        Part("_expert_feedforward_output_dense", 1),
    ),
)
_QWEN = BankLayout(
    "moe_intermediate_dim",
    (
        Part("_expert_feedforward_gate_dense", 2),  # gate: the first half
        Part("_expert_feedforward_gate_dense", 2, half=1),  # up: the second
        Part("_expert_feedforward_output_dense", 1),
    ),
)
_GPT_OSS = BankLayout(
    "intermediate_dim",
    (
        Part("gate_up_proj", 2, stride=2),  # gate: even columns
        Part("gate_up_proj", 2, stride=2, shift=1),  # up: odd ones
        Part("down_proj", 1),
        Part("gate_up_proj_bias", 1, stride=2, bias=True),
        Part("gate_up_proj_bias", 1, stride=2, shift=1, bias=True),
    ),
)
# KerasHub's expert banks by class name
BANKS = {
    "MixtralMoeExperts": _MIXTRAL,
    "QwenMoeExperts": _QWEN,
    "Qwen3MoeExperts": _QWEN,
    "GptOssExperts": _GPT_OSS,
}


class FlatView:
    """One Part of a bank variable seen as a Dense kernel (or bias) of E*I units: unit e*I + j is unit j
    of expert e, on the Part's axis less one (the expert axis folded into it). It reads and writes the
    variable, so the unit scorers, zeroing and counting of removal/units take it as a variable."""

    def __init__(self, variable, part: Part, size: int):
        self.variable, self.part, self.size = variable, part, size
        self.axis = part.axis - 1
        shape = [int(d) for d in variable.shape]
        experts = shape.pop(0)
        shape[self.axis] = experts * size
        self.shape = tuple(shape)
        self.dtype = variable.dtype
        self.path = variable.path

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        own = np.take(np.asarray(self.variable), self.part.columns(self.size), axis=self.part.axis)
        flat = np.moveaxis(own, 0, self.axis).reshape(self.shape)
        return flat if dtype is None else flat.astype(dtype)

    def _full(self, flat, full):
        """`full` (an array of the variable's shape) with this Part's entries set from `flat` (the view's shape)."""
        import numpy as np

        moved = [int(d) for d in self.shape]
        moved[self.axis : self.axis + 1] = [int(full.shape[0]), self.size]
        index: list[Any] = [slice(None)] * full.ndim
        index[self.part.axis] = self.part.columns(self.size)
        full[tuple(index)] = np.moveaxis(np.reshape(flat, moved), self.axis, 0)
        return full

    def assign(self, flat) -> None:
        import numpy as np

        self.variable.assign(self._full(flat, np.array(self.variable)).astype(self.variable.dtype))

    def keep_mask(self, removed: list[int]):
        """A boolean mask of the variable's shape, False at the removed units' entries of this Part."""
        import numpy as np

        flat = np.ones(self.shape, dtype=bool)
        index: list[Any] = [slice(None)] * flat.ndim
        index[self.axis] = removed
        flat[tuple(index)] = False
        return self._full(flat, np.ones(tuple(int(d) for d in self.variable.shape), dtype=bool))


@dataclass
class ExpertFfn:
    """The experts of one block's bank, as removal/ffn's Ffn: `units` = experts * size, unit e*I + j being
    unit j of expert e; `slices()` the kernels' FlatViews (what scores read), `all_slices()` with the
    biases over units (GPT-OSS's), what is masked and counted."""

    path: str
    block: Any
    bank: Any
    layout: BankLayout

    @property
    def experts(self) -> int:
        return int(self.bank.num_experts)

    @property
    def size(self) -> int:
        return int(self.bank.intermediate_dim)

    @property
    def units(self) -> int:
        return self.experts * self.size

    def all_slices(self) -> list[tuple[FlatView, int]]:
        views = [FlatView(getattr(self.bank, p.attribute), p, self.size) for p in self.layout.parts]
        return [(v, v.axis) for v in views]

    def slices(self) -> list[tuple[FlatView, int]]:
        return [(v, axis) for v, axis in self.all_slices() if not v.part.bias]

    def variables(self) -> list:
        """The bank's variables that hold units (each once)."""
        return list({id(v.variable): v.variable for v, _axis in self.all_slices()}.values())


def banks(layer) -> list:
    """The expert banks inside a layer (a decoder block), in Keras' order."""
    return [sub for sub in keras_graph.all_layers(layer) if type(sub).__name__ in BANKS]


def ffns(model) -> list[ExpertFfn]:
    """One ExpertFfn per expert bank of the model's KerasHub MoE stack (Qwen-MoE's dense-only blocks have
    none), in the stack's order; [] for any other model."""
    stack = stacks.holding(model, banks)
    if stack is None:
        return []
    prefix = "" if stack.backbone is model else f"{stack.backbone.name}/"
    return [
        ExpertFfn(prefix + block.name, block, bank, BANKS[type(bank).__name__])
        for block in stack.blocks
        for bank in banks(block)
    ]


def kernel_ids(model) -> set[int]:
    """id() of every bank variable holding units (the targets of -g neuron on a mixture-of-experts model)."""
    return {id(var) for f in ffns(model) for var in f.variables()}


def even(found: list[ExpertFfn], removed: dict[str, list[int]], scores: dict[str, Any]) -> dict[str, list[int]]:
    """The selection's removed units (flat, per bank) made one count for every expert of the model (see
    the module docstring): round(removed / experts), at most all but one, each expert its lowest-scored."""
    import numpy as np

    experts = sum(f.experts for f in found)
    size = min(f.size for f in found)
    total = sum(len(removed.get(f.path, [])) for f in found)
    count = min(int(round(total / experts)), size - 1) if experts else 0
    out = dict(removed)
    for f in found:
        per_expert = np.asarray(scores[f.path]).reshape(f.experts, f.size)
        out[f.path] = sorted(
            int(e * f.size + j) for e in range(f.experts) for j in np.argsort(per_expert[e], kind="stable")[:count]
        )
    return out


def rebuild(model, kept: dict[str, list[int]]):
    """The model built again from its config with each expert keeping the units `kept` names (flat, per
    bank path; as many in every expert of the model), every other weight its own."""
    import numpy as np

    found = ffns(model)
    per_expert = {
        f.path: [sorted(u - e * f.size for u in kept[f.path] if u // f.size == e) for e in range(f.experts)]
        for f in found
    }
    counts = {len(units) for lists in per_expert.values() for units in lists}
    if len(counts) != 1:
        raise InputError(f"{model.name}: its experts would keep different numbers of units {sorted(counts)}")
    size = counts.pop()
    arguments = {f.layout.size_argument for f in found}
    stack = stacks.holding(model, banks)
    smaller, new_stack = stacks.rebuilt(model, stack, {arguments.pop(): size})
    new_found = {f.path: f for f in ffns(smaller)}
    for old_block, new_block in zip(stack.blocks, new_stack.blocks, strict=True):
        olds = [f for f in found if f.block is old_block]
        bank_ids = {id(v) for f in olds for v in f.variables()}
        new_bank_ids = {id(v) for f in olds for v in new_found[f.path].variables()}
        rest = zip(
            [w for w in old_block.weights if id(w) not in bank_ids],
            [w for w in new_block.weights if id(w) not in new_bank_ids],
            strict=True,
        )
        for old, new in rest:
            if old.name != new.name or tuple(old.shape) != tuple(new.shape):
                raise InputError(f"{new_block.name}: rebuilt unlike {old_block.name} ({new.path} for {old.path})")
            new.assign(np.asarray(old))
        for f in olds:
            new_bank = new_found[f.path].bank
            for attribute in {p.attribute for p in f.layout.parts}:
                old_value = np.asarray(getattr(f.bank, attribute))
                value = np.array(getattr(new_bank, attribute))
                for part in (p for p in f.layout.parts if p.attribute == attribute):
                    for e, units in enumerate(per_expert[f.path]):
                        source: list[Any] = [e] + [slice(None)] * (old_value.ndim - 1)
                        target = list(source)
                        source[part.axis] = part.columns(f.size, units)
                        target[part.axis] = part.columns(size)
                        value[tuple(target)] = old_value[tuple(source)]
                getattr(new_bank, attribute).assign(value)
    stacks.copy_the_rest(stack, new_stack, model, smaller)
    return smaller
