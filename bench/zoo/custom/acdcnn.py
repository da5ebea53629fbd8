"""Custom objects for acdc-nn 0.0.17's sequence model ACDC-NN-Seq (built by bench/zoo/fetch.py's
assemble_acdcseq as acdc_nn/nn.py build_acdc_seq builds it), for
`prunecli ... --custom-objects bench/zoo/custom/acdcnn.py`.

Its two Lambda layers join the shared network's outputs for the direct and the inverse mutation:
`out_diff` = (direct - inverse) / 2 (the stability change, antisymmetric by construction) and `out_av`
= (direct + inverse) / 2 (trained towards 0: the antisymmetry's residual).
"""


def diff(vects):
    """acdc_nn.nn.diff: half the difference of the direct and inverse predictions."""
    x, y = vects
    return (x - y) / 2.0


def avout(vects):
    """acdc_nn.nn.avout: their mean."""
    x, y = vects
    return (x + y) / 2.0


LAMBDA_LAYERS = {"out_diff": diff, "out_av": avout}
