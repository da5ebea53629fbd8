"""The process around a run: TensorFlow imported quietly, the XLA compile cache enabled first, and
weights read without copying them."""

from __future__ import annotations

import logging
import os
import sys


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ and Python logging out of the user's terminal.

    TensorFlow prints start-up lines (oneDNN, CUDA stubs) straight to file descriptor 2 before its
    logging is configured, so the import runs with that descriptor pointed at /dev/null.
    Set PRUNECLI_DEBUG=1 to see them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and os.environ.get("PRUNECLI_DEBUG", "") in ("", "0"):
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    from prunecli.selection.kernels import enable_compile_cache

    enable_compile_cache()  # before any XLA compile (evaluation compiles first when --data is given)


def weight_values(variable):
    """A read-only NumPy view of a variable's current values, for reading them once (counting, checking).

    np.asarray(keras_variable) copies every weight (0.9 s on a 100M-parameter model); the tensor that
    TensorFlow reads the variable into shares its buffer with NumPy. Not for values kept past the
    variable's next assignment.
    """
    import numpy as np
    import tensorflow as tf

    return np.asarray(tf.convert_to_tensor(variable))
