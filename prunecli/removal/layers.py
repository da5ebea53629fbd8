"""Layer pruning: remove whole residual branches and shape-preserving layers, then rebuild the model.

Candidates, read from the functional graph:
- a residual branch, `x + f(x)` written as an Add of two tensors where one is an ancestor of the other
  and nothing outside the branch reads its inside: the block becomes `x`;
- a single layer with parameters whose output has exactly its input's shape: it becomes the identity.
Layers that change shape, merge several inputs, are shared, produce a model output or hold no
parameters are never candidates; the report gives each layer's reason. Around KerasHub decoder blocks
the candidates are the blocks; inside a ViT's or DeiT's encoder (one node of its backbone's graph) they
are the encoder's blocks, taken out by rebuilding the encoder (structure/vision_encoders.py).

Scores (lower = removed first): with --data, the loss increase on up to --score-batches (default 32)
batches when the candidate is bypassed; without data, the relative change ||out - in|| / ||in|| the
candidate makes on seeded probe inputs (a branch's output norm relative to its skip, a layer's
distance from the identity); --method random gives the random baseline. Candidates are then taken
lowest score first, skipping any that overlap one already taken, until --remove-layers N (or
--sparsity S of the candidates) are removed. The rebuilt model is a plain functional model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prunecli.config import name_matches
from prunecli.errors import ConfigError, InputError
from prunecli.results import StepResult
from prunecli.structure import keras_graph, probes
from prunecli.structure.rebuild import detach, functional_graph, ordered_nodes, rebuild
from prunecli.training.metrics import loss_callable, mean_loss

DEFAULT_SCORE_BATCHES = 32
PROBE_EXAMPLES = 64  # seeded stand-ins the candidates are scored on without labelled --data


# ---- candidates ----


@dataclass(eq=False)
class Candidate:
    name: str  # the layer, or the Add that closes the residual branch
    kind: str  # "layer" | "branch"
    layers: list[str]  # every layer the removal takes out, in graph order
    skip: set = field(default_factory=set)  # node ids dropped
    bypass: dict = field(default_factory=dict)  # node id -> input position passed through
    params: int = 0
    tensors: tuple = ()  # (input, output) tensors of the original graph, for the probe proxy
    score: float | None = None
    alias: dict = field(default_factory=dict)  # id(span output) -> span input, for a "block" (transformer.py)

    @property
    def nodes(self) -> set:
        return set(self.skip) | set(self.bypass)


def _shape(t) -> tuple:
    return tuple(t.shape)[1:]


def _params(layer) -> int:
    return int(sum(math.prod(w.shape) for w in layer.weights))


def _branch(add_node, skip_pos: int, producer: dict, readers: dict, outputs: set):
    """The nodes of `skip + f(skip)` between the skip tensor and the Add, or None if not a clean branch."""
    skip_t = add_node.input_tensors[skip_pos]
    branch_t = add_node.input_tensors[1 - skip_pos]
    inside, stack = [], [branch_t]
    seen = set()
    while stack:  # walk up from the branch output until the skip tensor
        t = stack.pop()
        if id(t) == id(skip_t):
            continue
        node = producer.get(id(t))
        if node is None:  # reached a model input without meeting the skip: not a residual
            return None
        if id(node) in seen:
            continue
        seen.add(id(node))
        inside.append(node)
        stack.extend(node.input_tensors)
    if not inside:
        return None
    for node in inside:  # nothing outside the branch may read what the branch computes
        for out in node.outputs:
            if id(out) in outputs:
                return None
            for reader in readers.get(id(out), []):
                if id(reader) not in seen and reader is not add_node:
                    return None
    return inside


@dataclass
class _GraphIndex:
    """The functional graph's calls in order, with who produces and who reads each tensor."""

    nodes: list
    producer: dict  # id(tensor) -> node
    readers: dict  # id(tensor) -> [nodes]
    outputs: set  # ids of the model's output tensors
    calls: dict  # id(layer) -> how many times the graph calls it
    order: dict  # id(node) -> position


def _index(model) -> _GraphIndex:
    nodes = ordered_nodes(functional_graph(model))
    readers: dict[int, list] = {}
    calls: dict[int, int] = {}
    for node in nodes:
        for t in node.input_tensors:
            readers.setdefault(id(t), []).append(node)
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
    return _GraphIndex(
        nodes,
        {id(out): node for node in nodes for out in node.outputs},
        readers,
        {id(t) for t in functional_graph(model).outputs},
        calls,
        {id(node): i for i, node in enumerate(nodes)},
    )


def _branch_candidates(g: _GraphIndex, allowed) -> tuple[list[Candidate], dict[int, str]]:
    """Residual branches `x + f(x)` (an unshared two-input Add of equal shapes), and the closing Add's
    name for every call inside one."""
    candidates: list[Candidate] = []
    in_branch: dict[int, str] = {}
    for node in g.nodes:
        if type(node.operation).__name__ != "Add" or len(node.input_tensors) != 2 or g.calls[id(node.operation)] > 1:
            continue
        if _shape(node.input_tensors[0]) != _shape(node.input_tensors[1]):
            continue
        for skip_pos in (0, 1):
            inside = _branch(node, skip_pos, g.producer, g.readers, g.outputs)
            if inside and allowed(node.operation.name):
                inside.sort(key=lambda n: g.order[id(n)])
                names = [n.operation.name for n in inside] + [node.operation.name]
                params = sum(_params(n.operation) for n in inside if hasattr(n.operation, "weights"))
                span = (node.input_tensors[skip_pos], node.outputs[0])
                candidates.append(
                    Candidate(
                        node.operation.name,
                        "branch",
                        names,
                        {id(n) for n in inside},
                        {id(node): skip_pos},
                        params,
                        span,
                    )
                )
                for n in inside:
                    in_branch.setdefault(id(n), node.operation.name)
                break
    return candidates, in_branch


def _not_removable(node, g: _GraphIndex, allowed) -> str | None:
    """Why a single call cannot be replaced by the identity, or None when it can."""
    layer = node.operation
    if g.calls[id(layer)] > 1:
        return "shared by several calls"
    if len(node.input_tensors) != 1 or len(node.outputs) != 1:
        return "takes several inputs" if len(node.input_tensors) != 1 else "has several outputs"
    if _shape(node.input_tensors[0]) != _shape(node.outputs[0]):
        return f"changes shape {_shape(node.input_tensors[0])} -> {_shape(node.outputs[0])}"
    if id(node.outputs[0]) in g.outputs:
        return "produces a model output"
    if not getattr(layer, "weights", None):
        return "has no parameters (removing it saves nothing)"
    if not allowed(layer.name):
        return "left out by --include/--exclude"
    return None


def _graph_host(model):
    """The functional model whose graph holds the removable layers: a KerasHub task (LlamaCausalLM...)
    calls its backbone as one node, so its decoder blocks (or its stack's) are candidates of the
    backbone's graph."""
    from prunecli.structure import decoders

    stack = _stack(model)
    return decoders.host(model) or (stack.backbone if stack is not None else model)


def _stack(model):
    """The model's KerasHub stack of blocks that only a rebuild from its config removes (structure/stacks:
    RWKV7's, the mixture-of-experts decoders'), or None; blocks prunecli rebuilds one by one (decoders,
    Transformer encoders) are not one."""
    from prunecli.structure import stacks

    return stacks.find(model, _known_blocks)


def _known_blocks(block) -> bool:
    """Blocks prunecli rebuilds one by one (KerasHub decoders, Transformer encoders): not a stack's."""
    from prunecli.structure import decoders, transformer

    return decoders.is_decoder(block) or type(block).__name__ in transformer.HUB_BLOCKS


def analyse(model, include=(), exclude=()) -> tuple[list[Candidate], list[dict]]:
    """Every candidate for removal (residual branches, identity-shaped layers, whole Transformer
    blocks), and for every layer call whether it is one and why.

    Around KerasHub decoder blocks the candidates are the blocks only: the backbone's other layers are
    its embeddings and final norm, and the shapes that make GPT-2's position embedding look like an
    identity-shaped layer (and adding it like a residual branch) do not make it one (dropping it would
    feed the blocks the token embedding twice, or without positions)."""
    # whole Transformer blocks (attention + FFN) as one; a ViT's or DeiT's encoder blocks
    from prunecli.structure import decoders, transformer, vision_encoders

    def allowed(name: str) -> bool:
        if include and not name_matches(name, include):
            return False
        return not name_matches(name, exclude)

    if vision_encoders.blocks(model):
        return _encoder_block_candidates(model, allowed)
    stack = _stack(model)
    model = _graph_host(model)
    g = _index(model)
    if stack is not None:
        return _stack_candidates(stack, g, allowed)
    blocks_only = bool(decoders.blocks(model))
    candidates, in_branch = ([], {}) if blocks_only else _branch_candidates(g, allowed)
    branch_names = {c.name for c in candidates}
    rows: list[dict] = []
    for node in g.nodes:
        layer = node.operation
        if layer.name in branch_names:
            reason = "closes a residual branch: x + f(x) becomes x"
        elif blocks_only:
            reason = (
                (
                    "a whole decoder block: its output becomes its input"
                    if allowed(layer.name)
                    else "left out by --include/--exclude"
                )
                if decoders.is_decoder(layer)
                else "not a decoder block (around KerasHub decoder blocks, whole blocks are the candidates)"
            )
        else:
            reason = _not_removable(node, g, allowed)
        whole_block = blocks_only and decoders.is_decoder(layer) and allowed(layer.name)
        is_candidate = layer.name in branch_names or reason is None or whole_block
        if reason is None:
            reason = "input and output shapes are equal: replaced by identity"
            span = (node.input_tensors[0], node.outputs[0])
            candidates.append(Candidate(layer.name, "layer", [layer.name], set(), {id(node): 0}, _params(layer), span))
        if id(node) in in_branch:
            reason += f"; inside residual branch {in_branch[id(node)]}"
        rows.append({"layer": layer.name, "class": type(layer).__name__, "candidate": is_candidate, "reason": reason})
    for block in transformer.block_candidates(model, allowed):
        if blocks_only and len(block["layers"]) != 1:  # a span of several calls: not one decoder block
            continue
        span = (block["input"], block["output"])
        alias = {id(block["output"]): block["input"]}
        candidates.append(
            Candidate(block["name"], "block", block["layers"], block["nodes"], {}, block["params"], span, alias=alias)
        )
    return candidates, rows


def _stack_candidates(stack, g: _GraphIndex, allowed) -> tuple[list[Candidate], list[dict]]:
    """The blocks of a KerasHub stack (structure/stacks) as candidates, each removed by building the model
    again with one block fewer; a block a later one cannot replace (configured unlike it) stays."""
    from prunecli.structure import stacks

    blocks = {id(b): b for b in stack.blocks}
    candidates, rows = [], []
    for node in g.nodes:
        layer = node.operation
        if id(layer) not in blocks:
            reason = "not a block of the stack (around KerasHub blocks, whole blocks are the candidates)"
        elif not allowed(layer.name):
            reason = "left out by --include/--exclude"
        else:
            reason = stacks.fixed_reason(stack, layer)
        y = node.outputs[0]
        x = next((t for t in node.input_tensors if _shape(t) == _shape(y)), None)
        if reason is None and x is None:
            reason = "its output is not shaped as its input"
        if reason is None:
            reason = "a whole block: the model is built again from its config without it"
            candidates.append(Candidate(layer.name, "block", [layer.name], {id(node)}, {}, _params(layer), (x, y)))
        rows.append(
            {
                "layer": layer.name,
                "class": type(layer).__name__,
                "candidate": reason.startswith("a whole"),
                "reason": reason,
            }
        )
    return candidates, rows


def _encoder_block_candidates(model, allowed) -> tuple[list[Candidate], list[dict]]:
    """Around a ViT's or DeiT's encoder (one layer of its backbone's graph, which holds every block) the
    candidates are its blocks, each x + f(x), taken out whole (structure/vision_encoders.rebuild): named by
    their path, the layers they take out by the block's own name (as a decoder block's are, what -g
    transformer matches heads and feed-forward networks to); a candidate's `skip` holds its block's id(),
    which no other candidate overlaps."""
    from prunecli.structure import vision_encoders

    candidates, rows = [], []
    for name, block in vision_encoders.named_blocks(model):
        ok = allowed(name) or allowed(block.name)
        reason = "a whole encoder block: its output becomes its input" if ok else "left out by --include/--exclude"
        rows.append({"layer": block.name, "class": type(block).__name__, "candidate": ok, "reason": reason})
        if ok:
            candidates.append(Candidate(name, "block", [block.name], {id(block)}, {}, _params(block)))
    return candidates, rows


# ---- scores ----


def batches(dataset, limit: int | None) -> list:
    """The first `limit` (x, y) batches as tensors, fixed, so every candidate sees the same data."""
    out = []
    for x, y in dataset:
        out.append((x, y))
        if len(out) >= (limit or DEFAULT_SCORE_BATCHES):
            break
    return out


def _scores_by_probe(model, candidates: list[Candidate], seed: int) -> None:
    """Each candidate's relative change |after - before| / |before| over PROBE_EXAMPLES seeded stand-ins,
    fed a few at a time (structure/equivalence.fitting_batch): all 64 at once through a 21M-parameter
    Xception on 254x254 images, every candidate's tensors watched, peaked at 12.8 GB."""
    import keras
    import numpy as np

    from prunecli.structure import equivalence

    host = _graph_host(model)
    graph = functional_graph(host)
    watched = keras.Model(list(graph.inputs), [t for c in candidates for t in c.tensors])
    inputs = probes.seeded_inputs(host, PROBE_EXAMPLES, seed)
    step = equivalence.fitting_batch(host, PROBE_EXAMPLES)
    changed, base = np.zeros(len(candidates)), np.zeros(len(candidates))  # sums of squares over the chunks
    for start in range(0, PROBE_EXAMPLES, step):
        values = watched([v[start : start + step] for v in inputs], training=False)
        for i in range(len(candidates)):
            before, after = (np.asarray(values[2 * i + j], dtype=np.float64) for j in (0, 1))
            changed[i] += float(np.sum((after - before) ** 2))
            base[i] += float(np.sum(before**2))
    for c, moved, size in zip(candidates, changed, base, strict=True):
        c.score = float(np.sqrt(moved) / (np.sqrt(size) + 1e-12))


def _scores_by_data_change(model, candidates: list[Candidate], sample: list, progress) -> None:
    """Each candidate's relative change of the model's outputs, |without - with| / |with|, on the
    batches of --data: its inputs, not stand-ins, when it has no labels to take a loss on (such a run
    scored on stand-ins and said "no --data")."""
    import numpy as np
    from keras import tree

    def outputs(m) -> np.ndarray:
        flat = [np.asarray(o, np.float64).ravel() for x, _y in sample for o in tree.flatten(m(x, training=False))]
        return np.concatenate(flat)

    base = outputs(model)
    for i, cand in enumerate(candidates):
        progress(f"scoring layer candidate {i + 1}/{len(candidates)}: {cand.name}")
        cand.score = float(np.linalg.norm(outputs(bypassed(model, [cand])) - base) / (np.linalg.norm(base) + 1e-12))


def _scores_by_output_change(model, candidates: list[Candidate], seed: int) -> None:
    """Each candidate's relative change of the model's outputs, |without - with| / |with|, over
    PROBE_EXAMPLES seeded stand-ins: a block inside one layer of the graph (a ViT's encoder) has no
    tensors of its own to watch, so the model is run without it."""
    import numpy as np

    from prunecli.structure import equivalence

    inputs = probes.seeded_inputs(model, PROBE_EXAMPLES, seed)
    step = equivalence.fitting_batch(model, PROBE_EXAMPLES)

    def outputs(m):
        chunks = [m([v[i : i + step] for v in inputs], training=False) for i in range(0, PROBE_EXAMPLES, step)]
        return np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks])

    base = outputs(model)
    for c in candidates:
        c.score = float(np.linalg.norm(outputs(bypassed(model, [c])) - base) / (np.linalg.norm(base) + 1e-12))


def score(model, data, task, config, progress, candidates: list[Candidate]) -> str:
    """Fill in each candidate's score; returns how they were scored (for the report)."""
    import numpy as np

    from prunecli.structure import vision_encoders

    if config.method == "random":
        values = np.random.default_rng(config.seed).random(len(candidates))
        for cand, v in zip(candidates, values, strict=True):
            cand.score = float(v)
        return "random"
    if data is not None and task is None:  # inputs without labels: the change each candidate makes to them
        _scores_by_data_change(model, candidates, batches(data.train, config.score_batches), progress)
        return "relative change of the outputs on --data (it has no labels)"
    if data is None:  # the change each candidate makes on stand-ins
        if vision_encoders.blocks(model):
            _scores_by_output_change(model, candidates, config.seed)
            return "relative change of the outputs on probe inputs (no --data)"
        _scores_by_probe(model, candidates, config.seed)
        return "relative change on probe inputs (no --data)"
    loss = loss_callable(task.loss, "layer scoring")
    sample = batches(data.train, config.score_batches)
    base = mean_loss(model, sample, loss)
    for i, cand in enumerate(candidates):
        progress(f"scoring layer candidate {i + 1}/{len(candidates)}: {cand.name}")
        cand.score = mean_loss(bypassed(model, [cand]), sample, loss) - base
    return "loss increase on --data when bypassed"


# ---- decision and rebuild ----


def choose(candidates: list[Candidate], config, notes: list) -> list[Candidate]:
    """Lowest score first (larger removals first on ties), never two overlapping candidates."""
    from prunecli.selection import policy

    wanted = config.remove_layers
    if wanted is None:
        wanted, _held = policy.removal_count(len(candidates), config.effective_sparsity, keep=0)
    chosen = lowest_first(candidates, wanted)
    if len(chosen) < wanted:
        notes.append(f"asked to remove {wanted} layers/blocks; only {len(chosen)} non-overlapping candidates exist")
    return chosen


def lowest_first(candidates: list[Candidate], wanted: int) -> list[Candidate]:
    """Up to `wanted` candidates, lowest score first (larger removals first on ties), never two that
    overlap: the order -g layer removes in, and -g transformer's blocks (removal/split.py)."""
    chosen: list[Candidate] = []
    taken: set = set()
    for cand in sorted(candidates, key=lambda k: (k.score, -k.params, k.name)):
        if len(chosen) >= wanted:
            break
        if cand.nodes & taken:
            continue
        chosen.append(cand)
        taken |= cand.nodes
    return chosen


def graph_changes(chosen: list[Candidate]) -> dict:
    """structure/rebuild.rebuild's skip, bypass and alias that take the chosen candidates out."""
    skip, bypass, alias = set(), {}, {}
    for cand in chosen:
        skip |= cand.skip
        bypass.update(cand.bypass)
        alias.update(cand.alias)
    return {"skip": skip, "bypass": bypass, "alias": alias}


def bypassed(model, chosen: list[Candidate]):
    """The model with the chosen candidates bypassed, sharing the remaining layers with `model` (for
    scoring); a model holding KerasHub decoder blocks is rebuilt around them (structure/decoders.py),
    its task (a CausalLM) around the rebuilt backbone; a ViT's or DeiT's encoder is rebuilt without the
    blocks (structure/vision_encoders); a KerasHub stack's model is built again from its config with fewer
    blocks (structure/stacks)."""
    from prunecli.structure import decoders, stacks, vision_encoders

    if _stack(model) is not None:
        return stacks.without(model, {name for cand in chosen for name in cand.layers})[0]
    changes = graph_changes(chosen)
    if vision_encoders.blocks(model):  # its blocks sit inside one encoder layer: the encoder is rebuilt
        return vision_encoders.rebuild(model, dropped=changes["skip"])
    if decoders.blocks(model):
        return decoders.rebuild_with(model, decoders.swaps_for(model), **changes)
    return rebuild(model, **changes)


def remove(model, chosen: list[Candidate]):
    """The model without the chosen candidates, as a new model with its own layers (KerasHub decoder
    blocks rebuilt as prunecli's, which save: structure/decoders.py; a KerasHub stack's model built again
    from its config: structure/stacks.py)."""
    return _without(model, chosen)[0]


def _without(model, chosen: list[Candidate]) -> tuple:
    """`remove`'s model, and the layers it names anew (old name -> new: a stack's blocks are named by place)."""
    from prunecli.structure import decoders, stacks, vision_encoders

    if _stack(model) is not None:
        return stacks.without(model, {name for cand in chosen for name in cand.layers})
    smaller = bypassed(model, chosen)
    return (smaller if decoders.blocks(model) or vision_encoders.blocks(model) else detach(smaller)), {}


def _why_none(model) -> str:
    """Why no candidate was found: a KerasHub model whose blocks prunecli cannot take out (its task or
    backbone is one node of the graph read), or a graph with no residual branch or shape-preserving layer."""
    from prunecli.structure import decoders, stacks

    blocked = stacks.blocker(model, _known_blocks)
    if blocked:
        return blocked
    hub = [layer for layer in keras_graph.children(model) if type(layer).__module__.startswith("keras_hub")]
    if hub and keras_graph.is_model(hub[0]) and decoders.host(model) is None:
        inner = hub[0]
        return (
            f"{type(inner).__name__} is one node of {model.name}'s graph, and prunecli takes whole blocks out of "
            f"functional models, of the KerasHub decoders it knows ({', '.join(decoders.CAUSAL_LMS)}) and of "
            "KerasHub backbones built from num_layers blocks of one class only"
        )
    return "no residual branch or shape-preserving layer"


def _none_removable(model, config) -> str:
    return f"{config.model_path}: no layer can be removed ({_why_none(model)})"


def refusal(model, targets, config) -> str | None:
    """Why -g layer cannot run on this model (the one-line error), or None: checked before any work."""
    return None if analyse(model, config.include, config.exclude)[0] else _none_removable(model, config)


def run(model, run_targets, data, task, config, progress, timings) -> StepResult:
    """Score the candidates and return the model without the chosen ones."""
    from prunecli.structure import targets

    c = config
    if c.schedule != "oneshot":
        raise ConfigError("--granularity layer prunes once: use --schedule oneshot (and --epochs to fine-tune)")
    with timings.phase("score"):
        candidates, rows = analyse(model, c.include, c.exclude)
        if not candidates:
            raise InputError(_none_removable(model, c))
        how = score(model, data, task, c, progress, candidates)
    notes: list[str] = []
    chosen = choose(candidates, c, notes)
    if not chosen:  # the model as it came: a rebuild of it would be a flattened copy (KerasHub's RWKV7
        # task, rebuilt around no removal, wrote a Functional whose blocks could not be built at load)
        notes.append(
            f"no layer or block was removed: --sparsity {c.effective_sparsity:g} of {len(candidates)} candidate(s) rounds to none"
        )
        return StepResult(
            sections={"removed_layers": [], "layer_pruning": _section(how, candidates, rows, set())}, notes=tuple(notes)
        )
    progress(f"removing {len(chosen)} of {len(candidates)} candidate layers/blocks")
    with timings.phase("rebuild"):
        smaller, renamed = _without(model, chosen)
    section = _section(how, candidates, rows, chosen)
    # the summary's and page's 'removed' line (outputs.report.removed_line)
    section.update(params_before=int(model.count_params()), params_after=int(smaller.count_params()))
    gone = {name for cand in chosen for name in cand.layers}
    kept_targets = [t for t in run_targets if not gone & set(t.name.split("/"))]
    return StepResult(
        sections={"removed_layers": [row["layer"] for row in rows if row["removed"]], "layer_pruning": section},
        notes=tuple(notes),
        model=smaller,
        targets=targets.carry_over(kept_targets, smaller, renamed),
        masks=None,
    )


def _section(how: str, candidates: list[Candidate], rows: list[dict], chosen) -> dict:
    """The report's layer_pruning section: every candidate's score and whether it went, every layer's row."""
    removed_names = {cand.name for cand in chosen}
    gone = {name for cand in chosen for name in cand.layers}
    for row in rows:
        row["removed"] = row["layer"] in gone
    return {
        "score": how,
        "candidates": [
            {
                "name": cand.name,
                "kind": cand.kind,
                "layers": cand.layers,
                "params": cand.params,
                "score": cand.score,
                "removed": cand.name in removed_names,
            }
            for cand in candidates
        ],
        "layers": rows,
    }
