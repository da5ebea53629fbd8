"""Language models: which models read token ids, which of them predict the next token, and which of
their weights are the ends (token embeddings, the LM head) rather than the decoder's projections.

A *token model* takes integer token ids: a KerasHub backbone or task (inputs `token_ids` and
`padding_mask`), or a plain Keras model whose one input feeds an Embedding. A *causal LM* is a token
model whose output gives, per position, a score for every token of its vocabulary (logits, or
probabilities after a softmax): KerasHub's GPT2CausalLM, LlamaCausalLM, ..., or an Embedding ->
decoder -> Dense(vocab) model. Its labels are its own inputs shifted by one (io/data/tokens.py).

The ends are left out of pruning by default, as the Wanda and SparseGPT papers leave them: the
embedding is a lookup (pruning a row deletes a token), and the head's rows are the vocabulary. In
KerasHub models neither is a target anyway (ReversibleEmbedding is not in the layer table); a plain
Keras model's Embedding and Dense(vocab) head are, and `without_lm_ends` takes them out.
"""

from __future__ import annotations

from prunecli.structure import keras_graph

HUB_INPUTS = ("token_ids", "padding_mask")  # what KerasHub's text backbones and tasks take


def input_names(model) -> list[str]:
    return [str(t.name) for t in getattr(model, "inputs", None) or []]


def _integer_input(model) -> bool:
    inputs = getattr(model, "inputs", None) or []
    return len(inputs) == 1 and "int" in str(getattr(inputs[0], "dtype", ""))


def is_token_model(model) -> bool:
    """Whether the model takes token ids: KerasHub's named inputs, or one integer input."""
    names = input_names(model)
    if names and "token_ids" in names and set(names) <= set(HUB_INPUTS):
        return True
    return _integer_input(model) and vocabulary_size(model) is not None


def vocabulary_size(model) -> int | None:
    """The number of token ids the model reads: a KerasHub backbone's `vocabulary_size` (its task's
    backbone's), else the input size of the first Embedding-like layer; None when neither exists."""
    for holder in (model, getattr(model, "backbone", None)):
        size = getattr(holder, "vocabulary_size", None)
        if isinstance(size, int) and size > 0:
            return size
    for layer in keras_graph.all_layers(model)[1:]:
        size = getattr(layer, "input_dim", None)
        if isinstance(size, int) and size > 0:
            return size
    return None


def is_causal_lm(model) -> bool:
    """A token model whose only output is (batch, positions, vocabulary): next-token scores."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1 or not is_token_model(model):
        return False
    shape = tuple(outputs[0].shape)
    return len(shape) == 3 and shape[-1] is not None and shape[-1] == vocabulary_size(model)


def outputs_are_logits(model) -> bool:
    """Whether a causal LM's scores are logits: what its compiled loss says (KerasHub compiles
    from_logits=True), else whether the layer producing them ends in a softmax."""
    loss = getattr(model, "loss", None)
    try:
        config = loss.get_config() if loss is not None and hasattr(loss, "get_config") else {}
    except Exception:  # noqa: BLE001 - a plain function: no config
        config = {}
    if "from_logits" in (config or {}):
        return bool(config["from_logits"])
    return ends_in_softmax(model) is not True


def ends_in_softmax(model) -> bool | None:
    """Whether the layer producing the model's first output is a softmax (a Softmax layer or a softmax
    activation), so its scores are probabilities, not logits (log-softmax scores read as logits give
    the same distribution); None when that layer cannot be found."""
    import keras

    try:
        layer = model.get_layer(keras_graph.producer_name(model.outputs[0]))
    except (ValueError, AttributeError):
        return None
    if isinstance(layer, keras.layers.Softmax):
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def max_sequence_length(model) -> int | None:
    """The most positions the model takes: a fixed input length, or a KerasHub backbone's learned
    position table (GPT-2's `max_sequence_length`); None when any length runs (rotary positions)."""
    for t in getattr(model, "inputs", None) or []:
        shape = tuple(t.shape)
        if len(shape) >= 2 and shape[1] is not None:
            return int(shape[1])
    for holder in (model, getattr(model, "backbone", None)):
        size = getattr(holder, "max_sequence_length", None)
        if isinstance(size, int) and size > 0:
            return size
    return None


def lm_ends(model) -> dict[str, str]:
    """{layer name: why} of a causal LM's layers that are its ends: each Embedding reading the token
    ids, and the layer producing the vocabulary scores. Empty for any other model."""
    if not is_causal_lm(model):
        return {}
    vocab = vocabulary_size(model)
    ends = {}
    for layer in keras_graph.all_layers(model)[1:]:
        if getattr(layer, "input_dim", None) == vocab:
            ends[layer.name] = "the token embedding"
    for name in keras_graph.output_layer_names(model):
        ends.setdefault(name, "the LM head (its units are the vocabulary)")
    return ends


def without_lm_ends(model, found: list, include=()) -> tuple[list, list[str]]:
    """The targets minus a causal LM's token embeddings and head (see the module docstring), with a
    note naming them; a layer named by --include is kept."""
    from prunecli.structure.targets import OPT_IN, named_in

    ends = lm_ends(model)
    if not ends:
        return found, []
    dropped = [t for t in found if t.layer_name.split("/")[-1] in ends and not named_in(t, include)]
    names = sorted({t.layer_name for t in dropped})
    notes = [f"{name} not pruned: {ends[name.split('/')[-1]]} of a language model {OPT_IN}" for name in names]
    return [t for t in found if t not in dropped], notes
