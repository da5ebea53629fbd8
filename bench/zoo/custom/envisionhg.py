"""Custom objects for envisionhgdetector 3.0.8's gesture CNN (model/cnn_default.h5, built by
bench/zoo/fetch.py's assemble_envisionhg as envisionhgdetector/model_cnn.py builds it), for
`prunecli ... --custom-objects bench/zoo/custom/envisionhg.py`.

model_cnn.py's BasicPreprocessing adds N(0, noise_stddev) noise to the landmarks while training and passes
them through unchanged otherwise: the same layer in Keras 3 operations, under its name and config key.
"""

import keras
from keras import ops


class BasicPreprocessing(keras.layers.Layer):
    """Training-time Gaussian noise on the inputs (envisionhgdetector's); the identity at inference."""

    def __init__(self, noise_stddev=0.025, **kwargs):
        super().__init__(**kwargs)
        self.noise_stddev = noise_stddev
        self.seed = keras.random.SeedGenerator(0)

    def call(self, inputs, training=None):
        if training:
            return inputs + keras.random.normal(ops.shape(inputs), stddev=self.noise_stddev, seed=self.seed)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "noise_stddev": self.noise_stddev}
