"""Custom objects for bigbert 0.1.0's URL model (bigbert/models/bigru.h5), for
`prunecli ... --custom-objects bench/zoo/custom/bigbert.py`.

The package loads the file with keras-self-attention 0.42.0's SeqSelfAttention, written against the
Keras-2 backend API (`K.dot`, `K.batch_dot`), which Keras 3 no longer has. This is that layer's
additive attention as 0.42.0 computes it, in Keras 3 operations: h[t, t'] = tanh(x_t Wt + x_t' Wx + bh),
e[t, t'] = h[t, t'] Wa + ba, then the configured activation (sigmoid here), exp(e - max over t'), masked
rows and columns zeroed, each row divided by its sum (+ epsilon), and the output a[t] . x; the weights
in the file's order (Wt, Wx, bh, Wa, ba). attention_width and the multiplicative form are not ported
(the file uses neither).
"""

import keras
from keras import ops


class SeqSelfAttention(keras.layers.Layer):
    """keras-self-attention 0.42.0's SeqSelfAttention, additive form, no attention window."""

    def __init__(
        self,
        units=32,
        attention_width=None,
        attention_type="additive",
        return_attention=False,
        history_only=False,
        use_additive_bias=True,
        use_attention_bias=True,
        attention_activation=None,
        attention_regularizer_weight=0.0,
        kernel_initializer="glorot_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention_type != "additive" or attention_width is not None or return_attention:
            raise ValueError("only the additive SeqSelfAttention without a window is ported")
        self.supports_masking = True
        self.units = units
        self.history_only = history_only
        self.use_additive_bias = use_additive_bias
        self.use_attention_bias = use_attention_bias
        self.attention_activation = keras.activations.get(attention_activation)
        self.attention_regularizer_weight = attention_regularizer_weight
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        feature_dim = int(input_shape[2])
        kernel = {"initializer": self.kernel_initializer}
        bias = {"initializer": self.bias_initializer}
        self.Wt = self.add_weight(shape=(feature_dim, self.units), name=f"{self.name}_Add_Wt", **kernel)
        self.Wx = self.add_weight(shape=(feature_dim, self.units), name=f"{self.name}_Add_Wx", **kernel)
        if self.use_additive_bias:
            self.bh = self.add_weight(shape=(self.units,), name=f"{self.name}_Add_bh", **bias)
        self.Wa = self.add_weight(shape=(self.units, 1), name=f"{self.name}_Add_Wa", **kernel)
        if self.use_attention_bias:
            self.ba = self.add_weight(shape=(1,), name=f"{self.name}_Add_ba", **bias)

    def call(self, inputs, mask=None):
        q = ops.expand_dims(ops.matmul(inputs, self.Wt), 2)
        k = ops.expand_dims(ops.matmul(inputs, self.Wx), 1)
        h = ops.tanh(q + k + self.bh if self.use_additive_bias else q + k)
        e = ops.squeeze(ops.matmul(h, self.Wa), -1)
        if self.use_attention_bias:
            e = e + self.ba
        if self.attention_activation is not None:
            e = self.attention_activation(e)
        e = ops.exp(e - ops.max(e, axis=-1, keepdims=True))
        if mask is not None:
            m = ops.cast(mask, e.dtype)
            e = e * ops.expand_dims(m, -1) * ops.expand_dims(m, 1)
        a = e / (ops.sum(e, axis=-1, keepdims=True) + keras.config.epsilon())
        return ops.matmul(a, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "history_only": self.history_only,
            "use_additive_bias": self.use_additive_bias,
            "use_attention_bias": self.use_attention_bias,
            "attention_activation": keras.activations.serialize(self.attention_activation)
            if self.attention_activation is not None
            else None,
            "attention_regularizer_weight": self.attention_regularizer_weight,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
