"""`-g hidden` on KerasHub decoders (Llama, Mistral, Qwen, Qwen3, Gemma, Phi-3, SmolLM3 with RMSNorms;
GPT-2, OPT, Bloom, Falcon, GPT-NeoX with LayerNorms): residual-stream (hidden) channels scored, chosen
and removed for real.

Channel c of the residual stream is the token embedding's column c (untied: the reverse embedding's
row c too; GPT-2's and OPT's learned positions' column c), in every block both norms' entry c (scale;
a LayerNorm's offset too), the q/k/v kernels' input row c, the attention output's entry c (and its
bias), the gate/up kernels' input row c and the down kernel's column c (and its bias), and the final
norm's (structure/decoders.stream_slices). Zeroed in all of them, the channel is zero along the whole
stream; structure/decoders.narrower deletes it, with each RMSNorm's scale and epsilon corrected for the
channels it no longer averages over, and each LayerNorm made one that still normalises as over the
full width (structure/narrowed_norm), and the rebuilt model is checked against the masked one before
anything is saved.

The channels go for real, so `-g hidden` needs --shrink and --schedule oneshot (config/checks.py): a
masked model fine-tuned would grow them back through the token embedding and the norm scales, which
are not prunecli targets and hold no mask.

Scores, one per channel, lower = removed first:
- `magnitude`, `neuron-mean`, `l1-norm`: the geometric mean over the channel's slices of the slice's
  mean |w|, LayerNorm offsets left out (decoders.offset_slices); `l2-norm`: the geometric mean of their L2 norms (a product of magnitudes, as -g
  neuron scores SwiGLU units: scaling one projection leaves the ranking as it was);
- `random`: seeded;
- `taylor`: sum |w * dL/dw|, `gradient`: sum |dL/dw| over all the channel's slices, accumulated over
  `--score-batches` batches of `--data`;
- `activation`: the mean |x_c| of the residual stream where each norm reads it (both norms of every
  block and the final one), over the tokens of `--score-batches` batches of `--data` (padding left
  out), summed over the norms: Minitron's embedding-channel importance (Muralidharan et al. 2024).

Selection is one set of D channels through selection/policy.select_units (the run's threshold,
min-keep and overrides apply; --scope has a single set to rank). At least MIN_CHANNELS stay, and when
D is a multiple of ALIGN the kept width stays one too (fewer channels go, never more), so the
narrowed matrices keep the tile-friendly widths accelerators want.
"""

from __future__ import annotations

from typing import Any

from prunecli.errors import ConfigError, InputError
from prunecli.removal import units
from prunecli.structure import decoders, equivalence

DATA_METHODS = ("taylor", "gradient")
MEAN_METHODS = ("magnitude", "neuron-mean", "l1-norm")
METHODS = MEAN_METHODS + ("l2-norm", "random", "activation") + DATA_METHODS
MIN_CHANNELS = 8  # a residual stream narrower than this is no model worth shipping
ALIGN = 8  # a width that is a multiple of this stays one
NAME = "hidden"  # the one set select_units ranks


def applies(model) -> bool:
    """Whether the model holds KerasHub decoder blocks, whose residual stream `-g hidden` narrows."""
    return bool(decoders.blocks(model))


def refusal(model, targets, config) -> str | None:
    """Why -g hidden cannot run on this model (the one-line error), or None: checked before any work."""
    if not applies(model):
        return f"{config.model_path or 'model'}: -g hidden needs KerasHub decoder blocks (those of a causal LM such as Llama or GPT-2)"
    blocker = decoders.narrow_blocker(model)
    return f"{config.model_path or 'model'}: the residual stream cannot be narrowed: {blocker}" if blocker else None


# ---------------------------------------------------------------------------------------------------
# Scores


def data_scores(model, slices: list[tuple[Any, int]], data, loss_fn, method: str, max_batches: int | None):
    """(channels,) Taylor |w*g| or gradient |g| summed over every slice of the channel."""
    import numpy as np

    if data is None or loss_fn is None:
        raise ConfigError(f"-g hidden with --method {method} needs --data")
    return np.sum(units.gradient_scores(model, slices, data, loss_fn, method, max_batches), axis=0)


def activation_scores(model, data, max_batches: int | None):
    """(channels,) mean |x_c| of the stream at every norm's input over the batches' tokens, summed
    over the norms (units.mean_abs_inputs)."""
    import numpy as np

    if data is None:
        raise ConfigError("-g hidden with --method activation needs --data")
    norms = [norm for block in decoders.blocks(model) for norm in decoders.residual_norms(block)]
    norms.append(decoders.stream_ends(model)[1])
    return np.sum(units.mean_abs_inputs(model, norms, data, max_batches), axis=0)


def score(model, slices: list[tuple[Any, int]], config, data=None, loss_fn=None):
    """(channels,) scores with the method the config names."""
    import numpy as np

    method = config.method
    if method not in METHODS:
        raise ConfigError(f"-g hidden scores with {', '.join(METHODS)}; got --method {method}")
    if method == "random":
        return np.random.default_rng(config.seed).random(int(slices[0][0].shape[1]))
    if method == "activation":
        return activation_scores(model, data, config.score_batches)
    if method in DATA_METHODS:
        return data_scores(model, slices, data, loss_fn, method, config.score_batches)
    offsets = decoders.offset_slices(model)
    return units.weight_scores([pair for pair in slices if id(pair[0]) not in offsets], method)


def choose(scores, config, notes: list, sparsity: float | None = None) -> list[int]:
    """The channels removed, ascending: the policy's choice over one set of D, at least MIN_CHANNELS
    kept, and when D is a multiple of ALIGN the removed count rounded down to one (the lowest-scored
    of the policy's choice go)."""
    from prunecli.selection import policy

    width = len(scores)
    removed = policy.select_units({NAME: scores}, config, notes, min(MIN_CHANNELS, width), sparsity)[NAME]
    if width % ALIGN == 0 and len(removed) % ALIGN:
        wanted = len(removed) - len(removed) % ALIGN
        notes.append(
            f"-g hidden keeps the residual width a multiple of {ALIGN}: "
            f"{wanted} of {width} channels removed, not {len(removed)}"
        )
        removed = sorted(sorted(removed, key=lambda c: (scores[c], c))[:wanted])
    return [int(c) for c in removed]


# ---------------------------------------------------------------------------------------------------
# The step


def run_hidden(model, targets, config, *, data=None, loss_fn=None, sample_x=None, progress=None):
    """Score and choose residual channels, zero them in `model` (in place) and rebuild it without them.

    Returns (model, masks, section, notes) as removal.ffn.run_ffn does: the new, narrower model (the
    same one when nothing goes); an all-True keep-mask for every target on it; the report's `hidden`
    section; notes."""
    import numpy as np

    from prunecli.structure import targets as targets_mod

    say = progress or (lambda _m: None)
    notes: list[str] = []
    why = refusal(model, targets, config)
    if why:
        raise InputError(why)
    if config.include or config.exclude:
        notes.append("-g hidden narrows every slice of the residual stream: --include/--exclude do not apply")
    slices = decoders.stream_slices(model)
    width = int(slices[0][0].shape[1])
    say(f"scoring the {width} residual channels of {len(decoders.blocks(model))} decoder block(s) with {config.method}")
    scores = score(model, slices, config, data, loss_fn)
    sparsity, target = None, None
    if config.target:  # the sparsity whose removed channels meet params=F (one cost each: nothing to complete)
        sparsity, _removed, target = units.fit_target(
            config,
            int(model.count_params()),
            lambda s: {"residual": choose(scores, config, [], s)},
            {"residual": units.unit_params(slices)},
            None,
            "residual channels",
        )
    removed = choose(scores, config, notes, sparsity)
    section = {
        "score": config.method,
        "hidden_before": width,
        "hidden_after": width - len(removed),
        "removed_channels": removed,
        "params_before": int(model.count_params()),
        "params_after": int(model.count_params()),
    }
    if target is not None:
        section["target"] = target
    targets = list(targets or [])
    if not removed:
        notes.append("-g hidden removed no residual channel")
        return model, {t.name: np.ones(t.shape, dtype=bool) for t in targets}, section, notes
    units.zero_units(slices, removed)  # the masked model the narrower one must equal
    say(f"rebuilding the model with {width - len(removed)} residual channels")
    kept = [c for c in range(width) if c not in set(removed)]
    new = decoders.narrower(model, kept)
    inputs = equivalence.example_inputs(model, 16, sample_x, config.seed, open_dim=8)
    section["verification"] = equivalence.check_equivalent(
        _kept_outputs(model, kept), new, inputs, "the model with residual channels removed"
    )
    section["params_after"] = int(new.count_params())
    masks = {t.name: np.ones(t.shape, dtype=bool) for t in targets_mod.carry_over(targets, new)}
    return new, masks, section, notes


def _kept_outputs(model, kept: list[int]):
    """What the narrower model must compute, from the masked one: a causal LM's logits as they are; a
    backbone's output (the normalised stream, zero at the removed channels) at the kept channels."""
    if decoders.host(model) is not model:
        return model

    def call(inputs, training=False):
        from keras import ops

        return ops.take(model(inputs, training=training), kept, axis=-1)

    return call


# the step in the run's StepResult form (like removal.ffn.run): the `hidden` section, the narrower
# model, its targets and all-True masks
run = units.step_result(run_hidden, "hidden", "residual channel scoring", DATA_METHODS)
