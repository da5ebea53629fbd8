"""The process around a run: TensorFlow imported quietly, the XLA compile cache enabled first, and
weights read without copying them."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import sys
from pathlib import Path


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
            with process_tempdir():
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
    enable_compile_cache()  # before any XLA compile (evaluation compiles first when --data is given)
    if _heap.own_process and not _heap.frozen:
        _freeze_heap()


class _heap:
    """Whether this process is the command line's own (`own_process`, set by the CLI before a command
    runs) and whether what it held once TensorFlow was imported has been frozen (`frozen`)."""

    own_process = False
    frozen = False


def command_line_process() -> None:
    """Called by the CLI before a command: the process is the run's own, so `quiet_tensorflow` may
    freeze its heap (a library caller's objects are theirs, and stay collectable)."""
    _heap.own_process = True


def _freeze_heap() -> None:
    """Every full garbage collection walks every object alive, and TensorFlow's and Keras' imports leave
    ~440,000 that live as long as the process: 0.25 s a collection on a CPU core, and a run makes several
    (Keras after deleting variables, once per --quantize; TFLite's converter once per conversion). Frozen
    once the imports are done (after one collection, so no garbage is kept), later collections walk only
    what the run creates: a digits run with --quantize and three exports spent 1.4 s of its 10 s in them,
    0.2 s frozen."""
    import gc

    gc.collect()
    gc.freeze()
    _heap.frozen = True


PROCESS_ENVIRONMENT = ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS")  # what quiet_tensorflow sets for a run


def keeps_global_state(function):
    """A library entry point (prune, apply_plan, verify, a sweep, a plan) that leaves the caller's
    process as it found it, failed or not: the environment variables and the TensorFlow and absl
    logging levels that `quiet_tensorflow` sets for the run are put back. A run computes as the
    command does whatever Keras defaults the caller set: the file's own dtypes, under Keras' global
    float32 policy and floatx (a caller's `mixed_float16` gave the loaded model's input layer a
    float16 policy, and `--quantize int8` then failed as if the file were float16), restored after;
    Python's `random` state too (Keras draws default seeds from it, which moved the caller's sequence),
    and TensorFlow's global seed: the run sees none, as the command does (tf.data combines a global seed
    with --seed when it shuffles --data, so under a caller's `keras.utils.set_random_seed` a call drew
    other calibration examples than the command with the same --seed), and the caller's seed and the
    position in its sequence of operation seeds are theirs again after. Keras' registry of custom objects
    by plain name is the caller's again too: `--custom-objects` registers its classes process-wide for the
    run (even under a Keras name, as a Monte-Carlo `Dropout` is), and left there, a later call on a
    Keras-2 `.h5` of Keras' own `Dropout` computed with the user's class (another accuracy than the
    command's), a call without the option read the custom model the command refuses, and the caller's
    own `load_model` built the user's class. Names with a package (`prunecli>Int8Conv2D`, what Keras'
    `register_keras_serializable` adds, the user's own decorators included) stay, as in Keras."""

    @functools.wraps(function)
    def kept(*args, **kwargs):
        environment = {name: os.environ.get(name) for name in PROCESS_ENVIRONMENT}
        python_random = random.getstate()  # Keras draws its default seeds from it: the caller's sequence stays theirs
        tensorflow_seed = _set_aside_tensorflow_seed()
        keras_generator = _keras_seed_generator()  # the caller's, put back after: the run makes its own (seed_run)
        levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
        absl_level = _absl_verbosity()
        keras_defaults = None
        plain_names = _plain_custom_objects()
        if "keras" in sys.modules:  # else the caller set no Keras default (importing it here would be loud)
            import keras

            keras_defaults = (keras.config.dtype_policy(), keras.config.floatx())
            keras.config.set_dtype_policy("float32")
            keras.config.set_floatx("float32")
        try:
            return function(*args, **kwargs)
        finally:
            random.setstate(python_random)
            if keras_generator is not None:
                _put_back_keras_seed_generator(keras_generator)
            if tensorflow_seed is not None:
                _put_back_tensorflow_seed(tensorflow_seed)
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if absl_level is not None:
                import absl.logging

                absl.logging.set_verbosity(absl_level)
            for name, level in levels.items():  # after absl's verbosity, which sets its logger's level
                logging.getLogger(name).setLevel(level)
            if keras_defaults is not None:
                import keras

                keras.config.set_dtype_policy(keras_defaults[0])
                keras.config.set_floatx(keras_defaults[1])
            if "keras" in sys.modules:
                _put_back_plain_custom_objects(plain_names)

    return kept


def _plain_custom_objects() -> dict:
    """The entries of Keras' registry of custom objects named without a package (`Dropout`, not
    `prunecli>Int8Conv2D`): what a caller registered by hand (none when Keras is not imported yet)."""
    if "keras" not in sys.modules:
        return {}
    import keras

    return {name: value for name, value in keras.saving.get_custom_objects().items() if ">" not in name}


def _put_back_plain_custom_objects(saved: dict) -> None:
    """Keras' registry by plain name as it was before the run: the run's --custom-objects registrations
    removed, anything they replaced restored."""
    import keras

    registry = keras.saving.get_custom_objects()
    for name in [name for name in registry if ">" not in name]:
        del registry[name]
    registry.update(saved)


KERAS_SEED_GENERATOR = "global_seed_generator"  # keras.src.random.seed_generator.GLOBAL_SEED_GENERATOR


def seed_run(seed: int) -> None:
    """Every draw of the run that is not given a seed of its own made from the run's --seed: Python's
    `random` is seeded with it, since Keras draws from it the default seed of each layer it builds (the
    SeedGenerator of a loaded model's Dropout, which fine-tuning draws its masks from) and of its global
    generator, which is dropped here so that an unseeded `keras.random` call remakes it from that seed.
    Without this, a fine-tuned model with Dropout (and a gradual schedule's masks) changed with the state
    of the caller's `random` (`keras.utils.set_random_seed`), and from one command to the next. Called as
    a run loads its model; `keeps_global_state` puts the caller's state back after."""
    random.seed(seed)
    if "keras" in sys.modules:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute(KERAS_SEED_GENERATOR, None)


def _keras_seed_generator():
    """(Keras' global SeedGenerator or None,) when Keras is imported (the caller's, which an unseeded
    `keras.random` call draws from); None when it is not (nothing to put back)."""
    if "keras" not in sys.modules:
        return None
    from keras.src.backend.common import global_state

    return (global_state.get_global_attribute(KERAS_SEED_GENERATOR),)


def _put_back_keras_seed_generator(saved) -> None:
    from keras.src.backend.common import global_state

    global_state.set_global_attribute(KERAS_SEED_GENERATOR, saved[0])


@contextlib.contextmanager
def tensorflow_seeded(seed: int):
    """TensorFlow's global seed set to the run's --seed within, the one before put back after (none, for a
    command). tf_keras layers (the tfmot engine's Dropout) draw from TensorFlow's unseeded random ops, so
    without it a fine-tuned tfmot model changed from one command to the next. Only there: setting the seed
    also clears TensorFlow's cached kernels (`_set_aside_tensorflow_seed`)."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    eager = context.context()
    saved = (eager._seed, getattr(eager, "_rng", None))  # noqa: SLF001  # no _rng before a first seed
    tf.random.set_seed(seed)
    try:
        yield
    finally:
        _put_back_tensorflow_seed(saved)


def _set_aside_tensorflow_seed():
    """(the caller's TensorFlow global seed, its generator of operation seeds) when the caller set one,
    after clearing it for the run; None otherwise (the command's case: nothing to do). TensorFlow has no
    public reader of the eager global seed, so its context's own fields are read and put back, and set
    directly: `tf.random.set_seed` also clears every cached kernel, which made each call in a process
    that had set a seed (a test worker) pay for rebuilding them."""
    if "tensorflow" not in sys.modules:  # a caller who set a TensorFlow seed has imported it
        return None
    from tensorflow.python.eager import context

    eager = context.context()
    if eager._seed is None:  # noqa: SLF001
        return None
    saved = (eager._seed, eager._rng)  # noqa: SLF001
    eager._seed = None  # noqa: SLF001  # no generator of operation seeds is read without a seed
    return saved


def _put_back_tensorflow_seed(saved) -> None:
    """The caller's global seed and its generator, where it was in its sequence (the run drew none of it)."""
    from tensorflow.python.eager import context

    eager = context.context()
    eager._seed, eager._rng = saved  # noqa: SLF001


def _absl_verbosity() -> int | None:
    try:
        import absl.logging  # light: no TensorFlow
    except ImportError:
        return None
    return absl.logging.get_verbosity()


@functools.cache
def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (None where TensorFlow does not say).
    TensorFlow turns them on by default only on x86 CPUs with AVX-512-class instructions; without them its
    convolutions take about as long with a few channels as with many (bench/TARGET.md), so a latency
    goal reached by removing channels depends on it. TF_ENABLE_ONEDNN_OPTS=1, set before TensorFlow is
    imported, turns them on."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow build without the (private) query
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


@functools.cache
def enable_compile_cache() -> str | None:
    """Keep XLA executables on disk (TensorFlow's persistent compilation cache), so a later run on a
    model of the same size skips the compile (for the selection kernels it costs more than the selection
    itself). Here, in the base floor, because quiet_tensorflow turns it on before a run's first compile.

    TensorFlow reads TF_XLA_FLAGS once, at its first XLA compilation, so this only takes effect if it
    runs before that; a TF_XLA_FLAGS that already names a cache directory is left alone (an empty
    `--tf_xla_persistent_cache_directory=` turns the cache off). The directory is per TF version.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return None
    import tensorflow as tf

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "prunecli", f"xla-tf{tf.__version__}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile every time
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()
    return directory


def weight_values(variable):
    """A read-only NumPy view of a variable's current values, for reading them once (counting, checking).

    np.asarray(keras_variable) copies every weight (0.9 s on a 100M-parameter model); the tensor that
    TensorFlow reads the variable into shares its buffer with NumPy. Not for values kept past the
    variable's next assignment.
    """
    import numpy as np
    import tensorflow as tf

    return np.asarray(tf.convert_to_tensor(variable))


_owned_tempdirs: list[str] = []  # the folders owned_tempdir made, innermost last
_outside: list = []  # (tempfile.tempdir, $TMPDIR) as they were before the outermost owned_tempdir


@contextlib.contextmanager
def process_tempdir():
    """The user's temporary folder again, inside owned_tempdir, for what lives as long as the process:
    an import. Matplotlib (TensorFlow imports it) makes its config and cache folder there when the home
    is read-only, and removes it at exit: made in the run's folder, which the run removes first, it
    was a 'FileNotFoundError' traceback after every command (XDG_CACHE_HOME a file, exit 0)."""
    import tempfile

    if not _outside:
        yield
        return
    inside_env, inside_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    _set_tempdir(*_outside[0])
    try:
        yield
    finally:
        _set_tempdir(inside_tempdir, inside_env)


def _set_tempdir(tempdir: str | None, env: str | None) -> None:
    import tempfile

    tempfile.tempdir = tempdir
    if env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = env


_OWNED_NAME = re.compile(r"prunecli-([1-9]\d{0,9})-[a-z0-9_]{8}")  # mkdtemp's 8 random characters


PID_MAX = 4_194_304  # Linux's PID_MAX_LIMIT (2**22); psutil.pid_exists overflows above 2**31 - 1


def process_gone(pid: int) -> bool:
    """Whether `pid`, read from a name prunecli wrote, is another process that no longer exists: the
    test for what a killed run left behind. A number no process can have is not a name we made."""
    import psutil

    return 0 < pid <= PID_MAX and pid != os.getpid() and not psutil.pid_exists(pid)


def remove_orphaned_tempdirs(parent: Path) -> list[Path]:
    """Delete the folders `owned_tempdir` made in `parent` for runs that were killed (SIGKILL, the
    OOM killer, power loss), which could not remove them: they can hold a model-sized file (Keras'
    save staging). A folder is orphaned when its name has exactly owned_tempdir's shape, this user
    owns it, and the process it names is gone (`process_gone`, the rule io/models' remove_stale_temps
    applies to an output's temporary files); any other folder is left alone."""
    import shutil

    removed = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            found = _OWNED_NAME.fullmatch(entry.name)
            if not found or not process_gone(int(found.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


@contextlib.contextmanager
def owned_tempdir():
    """Point Python's and TensorFlow's temporary files (Keras' save staging and its assets/ folder,
    autograph's generated modules, the TFLite converter's scratch) at a folder this run creates and
    removes at the end, success or failure, instead of leaving them in the user's $TMPDIR.
    Nested use (the CLI around the Python API) keeps the outer folder."""
    import shutil
    import tempfile

    if _owned_tempdirs and tempfile.gettempdir() == _owned_tempdirs[-1]:
        yield
        return
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    remove_orphaned_tempdirs(Path(tempfile.gettempdir()))
    base = tempfile.mkdtemp(prefix=f"prunecli-{os.getpid()}-")
    _owned_tempdirs.append(base)
    _outside.append((saved_tempdir, saved_env))
    tempfile.tempdir = os.environ["TMPDIR"] = base  # TMPDIR too: TensorFlow's C++ side reads it
    try:
        yield
    finally:
        _owned_tempdirs.remove(base)
        _outside.pop()
        _set_tempdir(saved_tempdir, saved_env)
        shutil.rmtree(base, ignore_errors=True)
