"""Custom objects for DeepLC's models (deeplc 2.2.38), for
`prunecli ... --custom-objects bench/zoo/custom/deeplc.py`.

DeepLC's convolutions use an anonymous activation, stored by Keras 2 under the name "<lambda>":
a leaky ReLU (slope 0.1) capped at 20, which deeplc.py itself passes to load_model as
custom_objects={"<lambda>": lrelu}.
"""

import keras


def lrelu(x):
    """Leaky ReLU with slope 0.1 below zero, capped at 20."""
    return keras.activations.relu(x, negative_slope=0.1, max_value=20.0)


CUSTOM_OBJECTS = {"<lambda>": lrelu}
