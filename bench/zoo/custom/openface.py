"""Custom objects for OpenFace's nn4.small2.v1.h5 (Siamese-for-face-recognization 0.0.2), for
`prunecli ... --custom-objects bench/zoo/custom/openface.py`.

The file's one Lambda layer (lambda_1, the last) holds Python 3.6 bytecode, which Python 3.11 cannot
read. Its code names `K.l2_normalize` and `axis=1`: the 128-d embedding scaled to unit length.
"""

import keras


def l2_normalize(x):
    """The embedding divided by its Euclidean norm (Keras 2's K.l2_normalize(x, axis=1))."""
    return keras.ops.normalize(x, axis=1, order=2)


LAMBDA_LAYERS = {"lambda_1": l2_normalize}
