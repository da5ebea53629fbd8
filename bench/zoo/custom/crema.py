"""Custom objects for crema's chord model (crema 0.2.0), for
`prunecli ... --custom-objects bench/zoo/custom/crema.py`.

crema/layers.py defines SqueezeLayer against Keras 2 (`keras.backend.squeeze`, and Keras-1's
`get_output_shape_for`); the model uses it to drop the frequency axis of length 1 that its full-height
Conv2D leaves, turning (time, 1, filters) into the (time, filters) sequence its GRUs read. The same
layer in Keras 3 operations, under the name and config key (`axis`) the file stores.
"""

import keras
from keras import ops


class SqueezeLayer(keras.layers.Layer):
    """Removes one axis of length 1 (crema's)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, x):
        return ops.squeeze(x, axis=self.axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        del shape[self.axis]
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
