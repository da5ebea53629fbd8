"""FFN neurons of Transformer blocks: score, mask and remove the intermediate units of each
feed-forward pair (transformer.ffn_pairs) directly, without the channel graph.

structure/surgery.py removes the same units when `-g neuron --shrink` runs on a Transformer (the
pipeline restricts the targets with transformer.ffn_only); these functions do it in one step for a
caller that already knows which units go (the benchmark, a library user), and are exact: a removed
unit's first-kernel column and bias are zeroed first, and act(0) = 0 for relu, gelu, silu and linear,
so the unit outputs 0 and its second-kernel row contributes nothing.
"""

from __future__ import annotations

from prunecli.structure.transformer import ffn_pairs


def ffn_scores(model, method: str = "l1-norm") -> dict[str, object]:
    """{first Dense name: (d_ff,) scores}: mean |w| (l1-norm) or L2 of each intermediate unit's
    column of the first kernel and row of the second (both belong to the unit)."""
    import numpy as np

    out = {}
    for first, second in ffn_pairs(model):
        k1 = np.asarray(model.get_layer(first).kernel)
        k2 = np.asarray(model.get_layer(second).kernel)
        if method == "l2-norm":
            out[first] = np.sqrt(np.square(k1).sum(0) + np.square(k2).sum(1))
        else:
            out[first] = (np.abs(k1).sum(0) + np.abs(k2).sum(1)) / (k1.shape[0] + k2.shape[1])
    return out


def shrink_ffn(model, removed: dict[str, list[int]]):
    """A new functional model whose FFN pairs lose these intermediate units ({first Dense: units}).

    The unit's column of the first kernel (and its bias) and its row of the second kernel go; nothing
    else changes. A removed unit's contribution act(b) * W2[row] is a constant that would have to be
    folded into the second bias: units are removed only after their first-kernel column and bias were
    masked to zero and act(0) == 0 (relu, gelu, silu, linear...), which the caller's masks ensure; the
    result is checked against the masked model by the caller (heads.verify)."""
    import numpy as np

    from prunecli.structure import layer_removal

    pairs = dict(ffn_pairs(model))
    replace, fill = {}, []
    for first_name, units in removed.items():
        if not units:
            continue
        first, second = model.get_layer(first_name), model.get_layer(pairs[first_name])
        keep = [u for u in range(int(first.units)) if u not in set(units)]
        cfg1 = first.get_config()
        cfg1["units"] = len(keep)
        new1 = type(first).from_config(cfg1)
        new2 = type(second).from_config(second.get_config())
        w1 = [np.take(np.asarray(w), keep, axis=-1) for w in first.weights]
        k2 = [np.asarray(w) for w in second.weights]
        k2[0] = k2[0][keep, :]
        replace[id(first)], replace[id(second)] = new1, new2
        fill += [(new1, w1), (new2, k2)]
    if not replace:
        return model
    rebuilt = layer_removal.rebuild(model, replace=replace)
    for layer, values in fill:
        layer.set_weights(values)
    return layer_removal.detach(rebuilt)


def mask_ffn(model, removed: dict[str, list[int]]) -> dict[str, object]:
    """Zero the removed units' first-kernel columns, biases and second-kernel rows in place; returns
    {target name: keep-mask} for both kernels (hold them while fine-tuning)."""
    import numpy as np

    pairs = dict(ffn_pairs(model))
    masks = {}
    for first_name, units in removed.items():
        first, second = model.get_layer(first_name), model.get_layer(pairs[first_name])
        m1 = np.ones(tuple(first.kernel.shape), bool)
        m1[:, units] = False
        m2 = np.ones(tuple(second.kernel.shape), bool)
        m2[units, :] = False
        first.kernel.assign(np.where(m1, np.asarray(first.kernel), 0))
        if first.bias is not None:
            b = np.asarray(first.bias).copy()
            b[units] = 0
            first.bias.assign(b)
        second.kernel.assign(np.where(m2, np.asarray(second.kernel), 0))
        masks[f"{first.name}/kernel"], masks[f"{second.name}/kernel"] = m1, m2
    return masks
