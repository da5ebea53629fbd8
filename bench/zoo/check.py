"""Load pruned/shrunk outputs with Keras 3 and compare them with the dense model on the real inputs.

    python bench/zoo/check.py [--custom-objects FILE.py] RESULT_JSON MODEL KIND X_NPZ OUT1 [OUT2 ...]

Per output: loads (Keras 3, else tf_keras for a Keras-2 .h5), accepts the original inputs, and the
agreement with the dense model: top-1 agreement (classifier; per position for sequence outputs),
decision agreement at 0.5 (binary), relative output error ||y - y_dense|| / ||y_dense|| (regression).
The dense model is run with Keras 3, else tf_keras (recorded as `dense_loader`); a tf.keras SavedModel
folder (MODEL a directory), which Keras 3 cannot read, with tf_keras.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch import predict_any  # noqa: E402


def compare(kind, dense, out):
    if dense.shape != out.shape:
        return {"shape_ok": False, "dense_shape": list(dense.shape), "out_shape": list(out.shape)}
    r = {"shape_ok": True}
    if kind == "classifier":
        r["agreement"] = float(np.mean(dense.argmax(-1) == out.argmax(-1)))
    elif kind == "binary":
        r["agreement"] = float(np.mean((dense > 0.5) == (out > 0.5)))
    r["rel_err"] = float(np.linalg.norm(out - dense) / max(np.linalg.norm(dense), 1e-12))
    return r


def main(argv):
    custom = None
    if argv[:1] == ["--custom-objects"]:  # the model's custom layers / Lambda functions (bench/zoo/models.py)
        custom, argv = argv[1], argv[2:]
    dest, model, kind, xfile, outs = argv[0], argv[1], argv[2], argv[3], argv[4:]
    data = np.load(xfile, allow_pickle=False)
    xs = {k: data[k][:64] for k in data.files if k.startswith("x")}
    res = {"outputs": {}}
    try:
        dense, loader = predict_any(model, xs, custom)
        res["dense_loader"] = loader
    except Exception as exc:  # noqa: BLE001
        res["dense_error"] = str(exc)[:300]
        dense = None
    for o in outs:
        # a `.h5 -> .h5` run keeps the input's Keras-2 flavour (README "Files"): such an output is read
        # as its dense input is read, Keras 3 first, else tf_keras, and the loader is recorded
        r = {}
        try:
            y, r["loader"] = predict_any(o, xs, custom)
            r.update(loads=True, runs=True)
        except Exception as exc:  # noqa: BLE001
            r.update(loads=False, error="load/predict: " + " ".join(str(exc).split())[:300])
            res["outputs"][o] = r
            continue
        if dense is not None:
            r.update(compare(kind, dense, y))
        res["outputs"][o] = r
    Path(dest).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
