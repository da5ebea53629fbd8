"""Custom objects for DM3Loc's models (dm3loc 1.2.0), for
`prunecli ... --custom-objects bench/zoo/custom/dm3loc.py`.

DM3Loc's `Attention_mask` (DM3Loc/hier_attention_mask.py) is written against Keras 2's backend
(`K.dot`, `K.repeat`, `K.batch_dot`, `keras.engine.topology`), which Keras 3 no longer has: this is
the same computation in Keras 3 operations, as a user porting the package would write it. Its input
is a sequence with the padding mask as the last channel; each of `r` heads scores the positions as
W2 . tanh(W1 . h) (structured self-attention, Lin et al. 2017), padded positions get -10000 before
the softmax, and the output is the `r` attention-weighted averages of the sequence.

The file's three Lambda layers hold Python 3.6 bytecode of `mask_func` (the pooled convolution
output times the mask), which Python 3.11 cannot read: LAMBDA_LAYERS gives the function.
"""

import keras
from keras import ops


def mask_func(inputs):
    """DM3Loc's masking Lambda: the sequence times its 0/1 padding mask."""
    return inputs[0] * inputs[1]


class Attention_mask(keras.layers.Layer):  # noqa: N801 (the name the file stores)
    """Multi-head structured self-attention over a masked sequence (DM3Loc), in Keras 3 operations."""

    def __init__(
        self,
        hidden,
        da,
        r,
        activation="tanh",
        return_attention=False,
        attention_regularizer_weight=0.0,
        normalize=False,
        attmod="softmax",
        sharp_beta=1,
        W_initializer="glorot_uniform",  # noqa: N803 (the stored config's keys)
        W1_regularizer=None,  # noqa: N803
        W2_regularizer=None,  # noqa: N803
        W1_constraint=None,  # noqa: N803 (None in every DM3Loc file)
        W2_constraint=None,  # noqa: N803
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden, self.da, self.r = hidden, da, r
        self.activation = keras.activations.get(activation)
        self.return_attention = return_attention
        self.attention_regularizer_weight = attention_regularizer_weight
        self.normalize, self.attmod, self.sharp_beta = normalize, attmod, sharp_beta
        self.W_initializer = keras.initializers.get(W_initializer)
        self.W1_regularizer = keras.regularizers.get(W1_regularizer)
        self.W2_regularizer = keras.regularizers.get(W2_regularizer)

    def build(self, input_shape):
        self.W1 = self.add_weight(
            shape=(self.hidden, self.da), name="W1", initializer=self.W_initializer, regularizer=self.W1_regularizer
        )
        self.W2 = self.add_weight(
            shape=(self.da, self.r), name="W2", initializer=self.W_initializer, regularizer=self.W2_regularizer
        )

    def call(self, inputs):
        sequence, mask = inputs[:, :, :-1], inputs[:, :, -1]
        energy = ops.transpose(ops.matmul(self.activation(ops.matmul(sequence, self.W1)), self.W2), (0, 2, 1))
        energy = energy + ops.expand_dims((1.0 - mask) * -10000.0, 1)  # [batch, r, n]
        if "softmax" in self.attmod:
            attention = ops.softmax(energy * self.sharp_beta, axis=-1)
        else:  # 'smooth'
            gates = ops.sigmoid(energy * self.sharp_beta)
            attention = gates / ops.sum(gates, axis=2, keepdims=True)
        if self.normalize:
            attention = attention * ops.expand_dims(ops.mean(mask, axis=1, keepdims=True), 1)
        pooled = ops.matmul(attention, sequence)  # [batch, r, hidden]
        if self.attention_regularizer_weight > 0:  # DM3Loc's penalty on heads that attend alike
            overlap = ops.matmul(attention, ops.transpose(attention, (0, 2, 1))) - ops.eye(self.r)
            batch = ops.cast(ops.shape(attention)[0], attention.dtype)
            self.add_loss(self.attention_regularizer_weight * ops.sum(ops.square(overlap)) / batch)
        return [pooled, attention] if self.return_attention else pooled

    def compute_output_shape(self, input_shape):
        pooled = (input_shape[0], self.r, self.hidden)
        return [pooled, (input_shape[0], self.r, input_shape[1])] if self.return_attention else pooled

    def get_config(self):
        return {
            **super().get_config(),
            "hidden": self.hidden,
            "da": self.da,
            "r": self.r,
            "activation": keras.activations.serialize(self.activation),
            "return_attention": self.return_attention,
            "attention_regularizer_weight": self.attention_regularizer_weight,
            "normalize": self.normalize,
            "attmod": self.attmod,
            "sharp_beta": self.sharp_beta,
            "W_initializer": keras.initializers.serialize(self.W_initializer),
            "W1_regularizer": keras.regularizers.serialize(self.W1_regularizer),
            "W2_regularizer": keras.regularizers.serialize(self.W2_regularizer),
        }


LAMBDA_LAYERS = {"lambda_*": mask_func}
