"""Build the bundled example: a small CNN trained on scikit-learn's digits (shipped with the package,
so no network is needed). Writes examples/digits_cnn.keras and examples/digits.npz.

Deterministic for a given TensorFlow build: seeds are fixed and op determinism is on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def load_digits_split(seed: int = 0):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = 360
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def build_model(keras_module=None):
    """The example CNN. `keras_module` defaults to Keras 3; the benchmarks pass tf_keras to build
    the same architecture for tfmot."""
    if keras_module is None:
        import keras as keras_module
    layers = keras_module.layers

    return keras_module.Sequential(
        [
            keras_module.Input((8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="relu1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense1"),
            layers.Dense(10, activation="softmax", name="predictions"),
        ],
        name="digits_cnn",
    )


def main(out_dir: str = "examples") -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = load_digits_split()
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "digits_cnn.keras")
    np.savez_compressed(out / "digits.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"digits_cnn: test accuracy {acc:.4f}, loss {loss:.4f}, {model.count_params()} parameters")


if __name__ == "__main__":
    main(*sys.argv[1:])
