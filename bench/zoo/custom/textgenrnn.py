"""Custom objects for textgenrnn 2.0.0's pretrained character model, for
`prunecli ... --custom-objects bench/zoo/custom/textgenrnn.py`.

The package builds its network in code around a custom layer, AttentionWeightedAverage, written
against the Keras-2 backend API (`K.dot`, `K.reshape`), which Keras 3 no longer has. This is that
layer's computation in Keras 3 operations: one weight per channel scores each time step, a softmax
over time (max-subtracted, masked steps weighted 0) weights the steps, and their weighted sum is
the output.
"""

import keras
from keras import ops


class AttentionWeightedAverage(keras.layers.Layer):
    """Softmax-weighted average over time; one learned score weight per channel."""

    def __init__(self, return_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.return_attention = return_attention

    def build(self, input_shape):
        self.W = self.add_weight(shape=(input_shape[2], 1), name=f"{self.name}_W", initializer="random_uniform")

    def call(self, x, mask=None):
        logits = ops.squeeze(ops.matmul(x, self.W), axis=-1)
        weights = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
        if mask is not None:
            weights = weights * ops.cast(mask, weights.dtype)
        weights = weights / (ops.sum(weights, axis=1, keepdims=True) + keras.config.epsilon())
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "return_attention": self.return_attention}
