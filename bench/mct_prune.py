"""Structured pruning by Sony's Model Compression Toolkit 2.6.1, the peer in bench/STRUCTURED.md.

MCT's Keras pruning (`mct.pruning.keras_pruning_experimental`: channel groups scored by the label-free
Hessian, removed until the weights memory fits) needs TensorFlow <= 2.15, so this script runs in its own
virtualenv, not prunecli's:

    python3.11 -m venv bench/.venv-mct
    bench/.venv-mct/bin/pip install model-compression-toolkit==2.6.1 "tensorflow==2.15.*"
    bench/.venv-mct/bin/python bench/mct_prune.py MODEL.h5 DATA.npz OUT.h5 --fraction 0.5

MODEL.h5 is read with tf.keras 2.15; DATA.npz's `x_train` gives the representative data (the first
--samples images, as prunecli's 128 calibration examples); OUT.h5 is the pruned model, written by
tf.keras 2.15 (read it back with tf_keras). The weights-memory target is --fraction of the dense
model's float32 weights (all of them, as MCT counts). Prints one JSON line: parameters before and
after, their ratio, and the seconds MCT took.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--fraction", type=float, required=True, help="weights memory to keep, of the dense model's")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import model_compression_toolkit as mct
    import numpy as np
    import tensorflow as tf

    # tf_keras 2.21 (prunecli's venv) writes `optional` into the input layer's config, which 2.15 does
    # not take; a subclass would be a custom layer MCT refuses, so the class reads around it while loading
    input_layer = tf.keras.layers.InputLayer
    inherited = input_layer.from_config.__func__
    input_layer.from_config = classmethod(
        lambda cls, config: inherited(cls, {k: v for k, v in config.items() if k != "optional"})
    )
    try:
        model = tf.keras.models.load_model(args.model, compile=False)
    finally:
        del input_layer.from_config
    x = np.load(args.data)["x_train"][: args.samples].astype("float32")

    def representative():
        for i in range(0, len(x), args.batch):
            yield [x[i : i + args.batch]]

    dense = int(sum(layer.count_params() for layer in model.layers))
    target = mct.core.ResourceUtilization(weights_memory=dense * 4 * args.fraction)
    start = time.perf_counter()
    pruned, _info = mct.pruning.keras_pruning_experimental(
        model=model, target_resource_utilization=target, representative_data_gen=representative
    )
    seconds = time.perf_counter() - start
    pruned.save(args.out)
    after = int(sum(layer.count_params() for layer in pruned.layers))
    print(
        json.dumps({"params_before": dense, "params_after": after, "params_fraction": after / dense, "mct_s": seconds})
    )


if __name__ == "__main__":
    main()
