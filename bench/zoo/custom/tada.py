"""Custom objects for TADA's model (tada-t2 0.14.0), for
`prunecli ... --custom-objects bench/zoo/custom/tada.py`.

TADA builds its network in code (TADA_T2/backend/model.py) around this attention layer, written with
TensorFlow ops: a score per position (tanh of the features times a (features x 1) weight plus a bias per
position), softmaxed over the positions, scales the sequence, which is returned whole
(`return_sequences=True`, the package's only use). The same computation in Keras 3 operations.
"""

import keras
from keras import ops


class Attention(keras.layers.Layer):
    """TADA's attention gate over the positions of a sequence."""

    def __init__(self, return_sequences=True, **kwargs):
        super().__init__(**kwargs)
        self.return_sequences = return_sequences

    def build(self, input_shape):
        self.W = self.add_weight(name="att_weight", shape=(input_shape[-1], 1), initializer="glorot_uniform")
        self.b = self.add_weight(name="att_bias", shape=(input_shape[1], 1), initializer="zeros")

    def call(self, inputs):
        weighted = inputs * ops.softmax(ops.tanh(ops.matmul(inputs, self.W) + self.b), axis=1)
        return weighted if self.return_sequences else ops.sum(weighted, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape if self.return_sequences else (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "return_sequences": self.return_sequences}
