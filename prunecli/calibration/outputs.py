"""How far a pruned model's outputs are from the dense model's, measured the way each output is read:
the comparison --normalize measured chooses an allocation by (oneshot._measured_allocation for the
calibrated methods, `least_changed` for the methods scored once)."""

from __future__ import annotations

PROBABILITY_FLOOR = 1e-7  # probabilities are clipped to [floor, 1] before the log


def of(model, batches, run=None) -> list:
    """The model's outputs on each batch (inference mode): per batch, a list of float64 arrays. `run`:
    the call to make (structure.equivalence.forward, made once for a comparison that runs the model
    several times, so that its trace is made once); the model's own call by default."""
    import numpy as np
    import tensorflow as tf

    call = run or (lambda x: model(x, training=False))
    return [[np.asarray(v, np.float64) for v in tf.nest.flatten(call(x))] for x in batches]


def kinds(model, reference) -> list[str]:
    """How each output is compared: "logits" (a causal LM's next-token scores: KL of their softmax, what
    perplexity reads), "probabilities" (rows on the last axis that are distributions: KL, what accuracy
    and cross-entropy read; a squared error prefers hedged wrong answers to confident ones) or "values"
    (anything else: relative squared error)."""
    import numpy as np

    from prunecli.structure import language

    if language.is_causal_lm(model) and language.outputs_are_logits(model):
        return ["logits"] * len(reference[0])
    found = []
    for i in range(len(reference[0])):
        rows = [batch[i] for batch in reference]
        distributions = all(
            r.ndim >= 2 and r.shape[-1] > 1 and r.min() >= 0 and np.allclose(r.sum(-1), 1.0, atol=1e-3) for r in rows
        )
        found.append("probabilities" if distributions else "values")
    return found


def error(outputs, reference, compared_as) -> float:
    """How far the pruned model's outputs are from the dense model's, summed over the outputs: the mean
    KL(dense || pruned) per row for distributions (`kinds`); the outputs compared as values TOGETHER as
    one relative squared error (all their squared errors over all their energy, as a summed squared-error
    loss reads them). Each on its own scale instead, an output of small scale beside the prediction (a
    residual trained towards 0: acdc-nn's out_av, 1/20 of its DDG's) weighed as much as the prediction,
    and its relative error, large for any change, chose an allocation 4 times as far on the prediction."""
    import numpy as np

    total, num, den, values = 0.0, 0.0, 0.0, False
    for i, kind in enumerate(compared_as):
        got = [batch[i] for batch in outputs]
        want = [batch[i] for batch in reference]
        if kind == "values":
            num += sum(float(np.sum((a - b) ** 2)) for a, b in zip(got, want, strict=True))
            den += sum(float(np.sum(b**2)) for b in want)
            values = True
            continue
        kl, rows = 0.0, 0
        for a, b in zip(got, want, strict=True):
            if kind == "logits":
                log_a = a - a.max(-1, keepdims=True)
                log_a -= np.log(np.exp(log_a).sum(-1, keepdims=True))
                log_b = b - b.max(-1, keepdims=True)
                log_b -= np.log(np.exp(log_b).sum(-1, keepdims=True))
            else:
                log_a, log_b = np.log(np.clip(a, PROBABILITY_FLOOR, 1.0)), np.log(np.clip(b, PROBABILITY_FLOOR, 1.0))
            kl += float(np.sum(np.exp(log_b) * (log_b - log_a)))
            rows += int(np.prod(b.shape[:-1]))
        total += kl / max(rows, 1)
    if values:
        total += num / den if den > 0 else num
    return total


def least_changed(model, targets, probe, candidates: dict, progress) -> tuple[str | None, dict]:
    """Which of `candidates` ({name: a callable that prunes `targets` in place}) changes the model's
    outputs on `probe` (input batches) least from the dense outputs (`error`): each is applied, the
    model run, and the targets' weights restored (also when a candidate fails). Returns the name (None
    when no error is finite) and the report's account: chosen, each error, examples, how compared."""
    import numpy as np

    from prunecli.calibration.capture import count_examples
    from prunecli.structure.equivalence import forward

    run = forward(model, probe, calls=len(candidates) + 1)
    dense_out = of(model, probe, run)
    compared_as = kinds(model, dense_out)
    saved = {t.name: np.array(t.variable) for t in targets}
    errors = {}
    try:
        for name, prune_in_place in candidates.items():
            prune_in_place()
            errors[name] = float(error(of(model, probe, run), dense_out, compared_as))
            for t in targets:
                t.variable.assign(saved[t.name])
            progress(f"{name}: output error {errors[name]:.4g}")
    finally:
        for t in targets:
            t.variable.assign(saved[t.name])
    finite = {k: v for k, v in errors.items() if np.isfinite(v)}
    chosen = min(finite, key=finite.get) if finite else None
    account = {
        "chosen": chosen,
        "output_error": {k: round(v, 6) for k, v in errors.items()},
        "examples": count_examples(probe),
        "compared_as": compared_as,
    }
    return chosen, account
