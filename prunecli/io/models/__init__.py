"""Loading and saving Keras models safely.

Formats: `.keras` (Keras 3 zip) and `.h5` (legacy HDF5, written by Keras 3 or by Keras 2/tf_keras).
The flavour is read from the file, not guessed from the name. Safe mode stays on, and a model that
carries serialised Python code (a Lambda layer) is refused before Keras sees it unless `unsafe`.

One job per module: `metadata` identifies a file from its bytes, `memory` judges from what it
declares whether it fits, `read` loads it with Keras (`archive`: a `.keras` file's weights read in
place, without Keras' in-memory copy of them), `write` plans and commits the output
atomically, `sizes` measures a file for the report, `cudnn` reads Keras-2 CuDNNGRU/CuDNNLSTM layers as the plain
layers they equal, `custom` registers the user's code for custom layers and Lambda functions, `channels_first` runs channels-first
convolutions on a CPU. This package is the public API.
"""

from __future__ import annotations

import os

from prunecli.errors import ConfigError
from prunecli.io.models import channels_first
from prunecli.io.models.cudnn import read_notes as _cudnn_notes
from prunecli.io.models.custom import register as register_custom
from prunecli.io.models.memory import check_memory
from prunecli.io.models.metadata import check_safe, inspect_file
from prunecli.io.models.read import NONFINITE_ADVICE, check_finite, quiet_keras, read_model
from prunecli.io.models.sizes import dir_sizes, file_sizes, sizes_in_background
from prunecli.io.models.write import (
    atomic_path,
    discard_staged,
    outputs_together,
    remove_stale_temps,
    replace_dir,
    resolve_output,
    save,
    staged,
    temp_name,
    write_in_place,
)

__all__ = [
    "atomic_path",
    "outputs_together",
    "replace_dir",
    "staged",
    "write_in_place",
    "NONFINITE_ADVICE",
    "check_finite",
    "check_memory",
    "check_safe",
    "discard_staged",
    "file_sizes",
    "inspect_file",
    "load_counted",
    "load",
    "quiet_keras",
    "read_notes",
    "register_custom",
    "remove_stale_temps",
    "resolve_output",
    "save",
    "dir_sizes",
    "sizes_in_background",
    "temp_name",
]


def read_notes(info) -> tuple[str, ...]:
    """What the report and `inspect` say about how the file was read (CuDNN layers read as their
    plain equivalents, Keras 2's hard_sigmoid kept); empty for most files."""
    if info.format not in ("h5", "savedmodel", "keras"):  # a SavedModel's config: the .h5 model_config it is read as
        return ()
    from prunecli.io.models.keras2_activations import uses_keras2_hard_sigmoid

    notes = _cudnn_notes(info.config)
    if info.flavour == "keras2" and uses_keras2_hard_sigmoid(info.config):
        notes += (
            "hard_sigmoid read as Keras 2 computed it, clip(0.2x + 0.5) (Keras 3's is clip(x/6 + 0.5)): a .keras"
            " output names it prunecli>keras2_hard_sigmoid and loads after"
            " `import prunecli.io.models.keras2_activations`",
        )
    return notes


def load(path: str | os.PathLike, unsafe: bool = False, custom_objects: tuple[str, ...] | list[str] = ()):
    """Load a model with Keras 3 (safe_mode on). Returns (model, ModelFile).

    Every check runs before Keras reads anything it could be harmed by: the file's identity, code
    in its config (a Lambda layer whose function `custom_objects` gives runs that function, not the
    file's code), the memory it declares; the loaded weights must then be finite. `custom_objects`:
    the user's .py files or modules whose classes and functions Keras needs (custom.py)."""
    model, info, _census = load_counted(path, unsafe, custom_objects)
    return model, info


def load_counted(path: str | os.PathLike, unsafe: bool = False, custom_objects: tuple[str, ...] | list[str] = ()):
    """`load`, and the census of the loaded weights its finiteness check took (structure/census.py:
    each variable's non-zeros, from the same one read): (model, ModelFile, Census)."""
    if not isinstance(unsafe, bool):  # a caller's unsafe="false" is truthy: it would have run the file's code
        raise ConfigError(f"unsafe takes True or False, got {unsafe!r}")
    if isinstance(custom_objects, (str, os.PathLike)):  # one file or module from Python: taken whole, as the
        custom_objects = (custom_objects,)  # CLI's and build_config's options take it, never one name per character
    custom = register_custom(tuple(str(c) for c in custom_objects))
    channels_first.run_on_cpu()  # a channels-first model then runs here as on a GPU
    info = inspect_file(path)
    if not unsafe:
        check_safe(info, custom)
    check_memory(info)
    model = read_model(info, unsafe, custom)
    census = check_finite(model, "load", info.path)  # NaN/Inf in the input file: a load error (exit 3)
    return model, info, census
