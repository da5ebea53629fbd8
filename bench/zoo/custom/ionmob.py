"""Custom objects for ionmob's GRU predictor (ionmob 0.2.2), for
`prunecli ... --custom-objects bench/zoo/custom/ionmob.py`.

ionmob (ionmob/models/deep_models.py) adds a per-charge square-root fit of the ion's m/z to the deep
part's output: ProjectToInitialSqrtCCS holds a slope and an intercept per charge state (1-4) as
constants, not weights, and returns sum_k (slope_k * sqrt(mz) + intercept_k) * charge_onehot_k. The
same computation in Keras 3 operations, its constants in its config.
"""

import keras
from keras import ops


class ProjectToInitialSqrtCCS(keras.layers.Layer):
    """ionmob's initial CCS guess from (mz, charge one-hot): a square-root fit per charge state."""

    def __init__(self, slopes, intercepts, **kwargs):
        super().__init__(**kwargs)
        self.slopes = [float(s) for s in slopes]
        self.intercepts = [float(i) for i in intercepts]

    def call(self, inputs):
        mz, charge = inputs
        fit = ops.convert_to_tensor([self.slopes]) * ops.sqrt(mz) + ops.convert_to_tensor([self.intercepts])
        return ops.sum(fit * charge, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "slopes": self.slopes, "intercepts": self.intercepts}
