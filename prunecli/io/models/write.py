"""Writing a model: where to (never the input unless forced), and atomically.

Saving is atomic: a temporary file in the target directory, then a rename. An `.h5` model whose
structure did not change is written by copying the input and replacing the weight arrays in place,
so a Keras-2 file stays a Keras-2 file that tf_keras can load again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from prunecli.errors import DISK_FULL, InputError, OutputError, write_error
from prunecli.io.models import cudnn
from prunecli.io.models.metadata import ModelFile, file_identity
from prunecli.io.models.read import NONFINITE_ADVICE, check_finite, quiet_keras
from prunecli.messages import shown
from prunecli.runtime import process_gone

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def default_output(path: str | os.PathLike) -> Path:
    """`model.h5` -> `model.pruned.h5`, next to the input; `.keras` for any other name, so that a
    wrongly named input is reported by the loader, not as a bad output name."""
    p = Path(path)
    if p.name in ("", ".", ".."):  # `prunecli prune .` inside a SavedModel folder: named after the folder
        p = _resolved(p)
    if not p.name:
        raise OutputError(f"no output name can be made from {path}: give one with -o")
    suffix = p.suffix if p.suffix in MODEL_SUFFIXES else ".keras"
    return p.with_name(f"{p.stem}.pruned{suffix}")


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop; loading reports it
        return p.absolute()


def resolve_output(input_path: str | os.PathLike, output: str | os.PathLike | None, force: bool) -> Path:
    """Where to write, refusing to overwrite the input unless forced and checking the directory. The
    default name (no `output`) never replaces an existing file unless forced: only a name the user
    gave may replace one."""
    out = Path(output) if output else default_output(input_path)
    try:
        resolved = _resolve_output(input_path, out, force)
    except OSError as exc:  # a name longer than the file system allows, a path through a file
        raise OutputError(f"output {shown(out)}: {exc.strerror or exc}") from exc
    if not output and not force and os.path.lexists(out):
        # the user named no output: a second run (another sparsity) replaced the first one's model,
        # or a file of theirs that happened to have the name, without a word
        raise OutputError(
            f"output {shown(out)} already exists and -o was not given (it is the default name): pass -o to"
            " name the output, or --force to replace it"
        )
    return resolved


def _resolve_output(input_path, out: Path, force: bool) -> Path:
    if out.name in MODEL_SUFFIXES:  # Path(".keras").suffix is "": a hidden name, not a suffix
        raise OutputError(f"output {out} has no name before {out.name}: name the file, as in model{out.name}")
    if out.suffix not in MODEL_SUFFIXES:
        raise OutputError(f"output {out} must end in {', '.join(MODEL_SUFFIXES[:-1])} or {MODEL_SUFFIXES[-1]}")
    src = Path(input_path)
    same = _resolved(out) == _resolved(src) or (out.exists() and src.exists() and os.path.samefile(out, src))
    if same and not force:
        raise OutputError(f"output {out} would overwrite the input; choose another -o or pass --force")
    parent = out.parent  # as given: the absolute path of a relative one may be longer than PATH_MAX
    if not parent.is_dir():
        raise OutputError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {parent}")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory")
    return out


TOKEN_HEX = 12  # hex digits of the random part of a temporary name: remove_stale_temps matches exactly these


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temporary files left beside `target` by runs that were killed (SIGKILL, power loss).

    Temporary names carry the writer's process id and a random token of exactly TOKEN_HEX lowercase
    hex digits (`.STEM.PID.TOKEN.tmpEXT`, as temp_name makes them), an export's scratch folder its
    process id too (`export_staging_prefix`); one of that exact shape whose process no longer exists is
    stale. Anything else, a user's `.out.99999999.backup.tmp.keras`
    included, is never touched, nor are files of running processes.
    """
    pattern = re.compile(
        rf"\.{re.escape(_temp_stem(target))}\.([1-9]\d{{0,9}})\.[0-9a-f]{{{TOKEN_HEX}}}\.tmp{re.escape(target.suffix)}"
    )
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            found = pattern.fullmatch(entry.name) or _EXPORT_STAGING.fullmatch(entry.name)
            if found and process_gone(int(found.group(1))) and (entry.is_file() or entry.is_dir()):
                with contextlib.suppress(OSError):
                    _remove(entry)
                    removed.append(entry)
    return removed


EXPORT_STAGING_PREFIX = ".prunecli-export."  # + PID + "." + mkdtemp's 8 characters: an export's scratch folder
_EXPORT_STAGING = re.compile(rf"{re.escape(EXPORT_STAGING_PREFIX)}([1-9]\d{{0,9}})\.[a-z0-9_]{{8}}")


def export_staging_prefix() -> str:
    """The prefix of this process's export scratch folders beside the outputs (remove_stale_temps
    removes those of a killed run: each held a whole SavedModel or TFLite file, 2.4 MB apiece)."""
    return f"{EXPORT_STAGING_PREFIX}{os.getpid()}."


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _temp_stem(target: Path) -> str:
    """The target's stem, cut so that the temporary name fits the file-system's name limit: a legal
    242-byte output name must not fail because its temporary name is 30 bytes longer."""
    try:
        name_max = os.pathconf(target.parent if str(target.parent) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    room = name_max - len(os.fsencode(f"..{os.getpid()}.{'0' * TOKEN_HEX}.tmp{target.suffix}"))
    stem = target.stem
    while len(os.fsencode(stem)) > max(room, 1):
        stem = stem[:-1]
    return stem


def temp_name(target: Path) -> str:
    """`.STEM.PID.RANDOM.tmpEXT`: hidden, beside the target, recognisably ours (remove_stale_temps)."""
    target = Path(target)
    return f".{_temp_stem(target)}.{os.getpid()}.{secrets.token_hex(TOKEN_HEX // 2)}.tmp{target.suffix}"


_together: dict = {"open": 0, "staged": [], "in_place": []}  # outputs_together(): open blocks, [(temp,
# target)] to rename, [writes to stdout, a FIFO or a device] to make once the renames are done
_planned: dict[str, tuple | None] = {}  # a planned output (absolute path) -> what it was when planned


def expect_unchanged(targets) -> None:
    """Record each planned output as it is now (io.paths.plan calls it before any work). The commit then
    refuses to replace one that changed since: two runs writing the same -o at once (or the same
    default name, both planned while it did not exist) each reported the sha256 and sparsity of its own
    model while the file held the other's; a file the user wrote there meanwhile was replaced."""
    for target in targets:
        _planned[os.path.abspath(target)] = file_identity(Path(target))


def _check_unchanged(targets) -> None:
    """Refuse (exit 5) before any rename when a planned output changed since it was planned."""
    for target in targets:
        key = os.path.abspath(target)
        if key in _planned and file_identity(Path(target)) != _planned[key]:
            raise _changed(target)


def _changed(target) -> OutputError:
    return OutputError(
        f"{shown(target)} changed while this run worked (another run or program wrote it); this run's"
        " outputs were not written: run it again, or give another -o"
    )


# The flags of the C library's two-name renames: renameat2 (linux/fs.h; glibc 2.28+, musl 1.2.2+) and
# renamex_np (macOS sys/stdio.h). NOREPLACE fails with EEXIST instead of replacing; EXCHANGE swaps the
# two names in one step, so the target never stops existing.
_RENAME_FLAGS = {"linux": {"noreplace": 1, "exchange": 2}, "darwin": {"noreplace": 4, "exchange": 2}}
_AT_FDCWD = -100
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP)  # this file system or kernel lacks it


@functools.cache
def _rename_call(kind: str):
    """The C library's rename with `kind`'s flag ("noreplace" or "exchange") as a function of two paths
    that returns 0 or the errno, or None where this platform has no such call. Bound once per process."""
    import ctypes

    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    if platform not in _RENAME_FLAGS:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    flag = _RENAME_FLAGS[platform][kind]
    if platform == "linux" and hasattr(libc, "renameat2"):
        call = libc.renameat2
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        bound = lambda src, dst: call(_AT_FDCWD, src, _AT_FDCWD, dst, flag)  # noqa: E731
    elif platform == "darwin" and hasattr(libc, "renamex_np"):
        call = libc.renamex_np
        call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        bound = lambda src, dst: call(src, dst, flag)  # noqa: E731
    else:
        return None

    def rename(src, dst) -> int:
        return 0 if bound(os.fsencode(src), os.fsencode(dst)) == 0 else ctypes.get_errno()

    return rename


def place_new(src: Path, dst: Path) -> None:
    """Rename `src` onto `dst` only if nothing is at `dst`, in one step where the OS allows it: a file
    another run or program put at `dst` after this run checked it (the window between _check_unchanged
    and the rename) raises FileExistsError instead of being replaced without a word. Falls back to a
    hard link (atomic too, files only) where the file system refuses the no-replace rename, and to a
    check right before os.replace (a window of microseconds) where it has no hard links either."""
    call = _rename_call("noreplace")
    if call is not None:
        err = call(src, dst)
        if not err:
            return
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), str(dst))
    if not os.path.isdir(src):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.replace(src, dst)


def _set_aside(target: Path) -> Path | None:
    """Move what is at `target` to a temporary name beside it (None if nothing is there), refusing
    when that is not what the plan recorded: it moved in one step, so the check reads the very file
    the commit would replace, not one that a rename of another writer's put there after the check."""
    if not os.path.lexists(target):
        return None
    backup = target.parent / temp_name(target)
    os.replace(target, backup)
    key = os.path.abspath(target)
    if key in _planned and file_identity(backup) != _planned[key]:
        _put_back(backup, target)
        raise _changed(target)
    return backup


def _put_back(backup: Path, target: Path) -> None:
    """The set-aside file back at `target`, unless another writer put a file there meanwhile: theirs
    is the newer and stays (what it replaced was this backup's content, as if this run never ran)."""
    try:
        place_new(backup, target)
    except FileExistsError:
        _remove(backup)


def _exchange(tmp: Path, target: Path) -> bool:
    """Swap `tmp` and an existing `target` in one step (True), so that `target` never stops existing:
    a run killed mid-commit leaves the old output or the new one there, never neither. The old content,
    now at `tmp`'s name, is checked against the plan and swapped back if another writer replaced it
    since (their file stays). False where the OS or file system cannot swap, or nothing is at `target`."""
    swap = _rename_call("exchange")
    if swap is None or not os.path.lexists(target):
        return False
    err = swap(tmp, target)
    if err in (*_UNSUPPORTED, errno.ENOENT):  # ENOENT: the target went away since lexists
        return False
    if err:
        raise OSError(err, os.strerror(err), str(target))
    key = os.path.abspath(target)
    if key in _planned and file_identity(tmp) != _planned[key]:
        err = swap(tmp, target)
        if err:
            raise OSError(err, os.strerror(err), str(target))
        raise _changed(target)
    return True


def _place(tmp: Path, target: Path) -> Path | None:
    """This run's `tmp` onto `target`: swapped with what is there where the OS can (_exchange), else
    that set aside (as planned) and a no-replace rename. Returns the old content's temporary path, for
    the caller to remove once every output is in place (or to put back if a later one fails)."""
    if _exchange(tmp, target):
        return tmp
    backup = _set_aside(target)
    try:
        place_new(tmp, target)
    except FileExistsError:  # created between the set-aside and this rename
        if backup is not None:
            _put_back(backup, target)
        raise _changed(target) from None
    except OSError:
        if backup is not None:
            _put_back(backup, target)
        raise
    return backup


def _committed(targets) -> None:
    """What was planned is written: a later write of the same path (a later run in this process) plans anew."""
    for target in targets:
        _planned.pop(os.path.abspath(target), None)


@contextlib.contextmanager
def outputs_together():
    """The run's outputs committed together: every file atomic_path writes inside the block (the model,
    its plan, exports, the report and summary; replace_dir's folders too) stays under its temporary
    name until the block ends without error, and is then renamed onto its target with the stop
    signals held off, so that a Ctrl-C or SIGTERM lands before every rename or after all of them. On
    an error or interrupt before that, every staged file is removed and no target changes: never a
    new model beside the previous run's report or plan (an interrupt between two renames did that).
    Blocks nest: the outermost commits (the CLI's, around the run and its report)."""
    from prunecli import interrupts

    outermost = _together["open"] == 0
    _together["open"] += 1
    try:
        yield
    except BaseException:
        if outermost:
            _discard_staged()
        raise
    finally:
        _together["open"] -= 1
    if not outermost:
        return
    with interrupts.held():  # a signal from here on stops the run after the renames, not between two
        try:
            interrupts.checkpoint()  # one that came before: nothing is renamed
        except BaseException:
            _discard_staged()
            raise
        written = [target for _tmp, target in _together["staged"]]
        _commit()
        if interrupts.requested():  # the stop is raised after the block: say what it did not undo
            interrupts.outputs_complete(written)


def staged(target: Path) -> Path:
    """Where `target`'s new bytes are now: its temporary name while outputs_together holds it, else
    itself (what reads an output back before the commit, its sizes and digest, reads this)."""
    target = Path(target)
    return next((tmp for tmp, t in _together["staged"] if t == target), target)


def discard_staged() -> list[Path]:
    """Drop every output staged so far in the open outputs_together block (their targets stay as they
    were) and return their targets: a run whose quality gate failed writes its report only."""
    dropped = [target for _tmp, target in _together["staged"]]
    _discard_staged()
    return dropped


def _discard_staged() -> None:
    staged, _together["staged"], _together["in_place"] = _together["staged"], [], []
    for tmp, _target in staged:
        with contextlib.suppress(OSError):
            _remove(tmp)


def write_in_place(write) -> None:
    """Make `write()` (a report or summary to standard output, a FIFO or a device: nothing to rename)
    with the run's commit, right after its renames, at once outside outputs_together. Written before
    them, `-r -` printed the sha256 and sparsity of a model that a refused commit (an output changed
    meanwhile, an immutable target) or a Ctrl-C before it then never wrote; a write that fails (a full
    device, exit 6) still leaves no new model: the renames are undone."""
    if _together["open"]:
        _together["in_place"].append(write)
    else:
        write()


def _commit() -> None:
    """Rename every staged output onto its target; the targets that exist are first set aside, so
    that a rename that fails (a target the user made immutable, a full disk for a folder's swap) or a
    target another writer changed since the plan (_place) puts every target back as it was and
    removes the staged files: all new, or all as before."""
    moved: list[tuple] = []  # (target, its old content set aside or None), the new one in place
    targets = [target for _tmp, target in _together["staged"]]
    try:
        _check_unchanged(targets)
    except OutputError:
        _discard_staged()
        raise
    target = None
    try:
        for tmp, target in _together["staged"]:
            moved.append((target, _place(tmp, target)))
    except (OSError, OutputError) as exc:
        _undo(moved)
        if isinstance(exc, OutputError):
            raise
        raise write_error(target, exc) from exc
    try:
        for write in _together["in_place"]:
            write()
    except BaseException:  # its own error (a full device, exit 6; a closed standard output), or a stop signal
        _undo(moved)  # while a FIFO's reader stalled (io.paths._write_all): the outputs as they were
        raise
    _together["staged"], _together["in_place"] = [], []
    _committed(targets)
    for _target, backup in moved:
        if backup is not None:
            with contextlib.suppress(OSError):
                _remove(backup)


def _undo(moved: list[tuple]) -> None:
    """Every target placed so far back as it was (its set-aside content returned: swapped back in one
    step where the OS can, so the target never stops existing), staged files removed."""
    swap = _rename_call("exchange")
    for done, backup in reversed(moved):
        if backup is not None and swap is not None and not swap(backup, done):
            with contextlib.suppress(OSError):
                _remove(backup)  # now this run's new content
            continue
        with contextlib.suppress(OSError):
            _remove(done)
        if backup is not None:
            with contextlib.suppress(OSError):
                _put_back(backup, done)
    _discard_staged()


def replace_dir(src: Path, target: Path) -> None:
    """A finished folder onto `target`: staged beside it inside outputs_together, moved at once outside."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputError(f"export target {target} exists and is not a directory")
    if _together["open"]:
        remove_stale_temps(target)
        tmp = target.parent / temp_name(target)
        os.replace(src, tmp)
        _together["staged"].append((tmp, target))
        return
    old = target.parent / temp_name(target)
    if target.exists():
        os.replace(target, old)
    os.replace(src, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: Path, output: bool = True):
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds (inside
    outputs_together, when that block ends, with the run's other outputs; not a scratch file the run
    reads back at once, `output=False`).

    An exception or Ctrl-C removes the temporary file; SIGKILL cannot, so the next write to the
    same target removes what killed runs left (remove_stale_temps).
    """
    target = Path(target)
    remove_stale_temps(target)
    tmp_path = target.parent / temp_name(target)
    try:
        try:  # created inside the outer try, so a Ctrl-C at any point after this line removes it
            tmp_path.touch(exist_ok=False)
        except OSError as exc:  # the user's name and the reason, not the temporary name; a full disk is exit 6
            raise write_error(target, exc) from exc
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            _keep_mode(tmp_path, target)
        except OSError as exc:
            if exc.errno in DISK_FULL:  # named by the user's path, not the temporary one
                raise write_error(target, exc) from exc
            raise
        if output and _together["open"]:  # renamed with the run's other outputs (outputs_together)
            _together["staged"].append((tmp_path, target))
            return
        from prunecli import interrupts

        interrupts.checkpoint()  # a signal swallowed earlier (see interrupts.py) still stops the rename
        _check_unchanged([target])
        try:
            backup = _place(tmp_path, target)
        except OSError as exc:
            raise write_error(target, exc) from exc
        _committed([target])
        if backup is not None:
            with contextlib.suppress(OSError):
                _remove(backup)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _keep_mode(tmp_path: Path, target: Path) -> None:
    """The new file takes the permission bits of the file it replaces: a model or report the user kept
    private (0600) was replaced by one anyone could read (the umask's 0644), a read-only one by a
    writable one. A new name keeps what the writer gave it."""
    try:
        st = os.stat(target)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        os.chmod(tmp_path, stat.S_IMODE(st.st_mode))


def save(
    model,
    out: Path,
    source: ModelFile | None = None,
    structure_changed: bool = False,
    output: bool = True,
    nonfinite_advice: str = NONFINITE_ADVICE,
    written: Callable[[Path], object] | None = None,
):
    """Write the model atomically (`output=False`: a scratch copy, written at once even inside
    outputs_together). An .h5 -> .h5 run with unchanged structure keeps the input's flavour. Weights
    that are NaN or Inf are never written (check_finite: exit 4, nothing saved). Returns the census
    of the weights written (structure/census.py), from that check's one read of them.

    `written(tmp)` is called once the temporary file holds every byte the output will hold, before its
    fsync and rename: a reader of its bytes (the sizes and digest, steps.measure_output) opens it then
    and reads while the file is synced and committed (the open file is the same whatever its name; a
    write that fails after it still leaves no output)."""
    census = check_finite(model, "the run", advice=nonfinite_advice)
    if structure_changed or source is None:
        from prunecli.structure.rebuild import renested

        model = renested(model) or model  # a TimeDistributed(Model) opened for the run, wrapped again
    try:
        with atomic_path(out, output=output) as tmp:
            if (
                source is not None
                and source.format == "h5"
                and out.suffix in (".h5", ".hdf5")
                and not structure_changed
            ):
                _check_source_unchanged(source)  # removed: "cannot write OUT: No such file", of the input
                shutil.copyfile(source.path, tmp)
                _check_source_unchanged(source)  # the copy is of another file: its config around our weights
                write_h5_weights(model, tmp)
            else:
                left_out = check_h5_writable(model, out) if out.suffix in (".h5", ".hdf5") else set()
                tmp.unlink()  # Keras writes the file itself
                with quiet_keras():
                    _drop_optimizer_state(model)
                    model.save(tmp)
                if left_out:
                    _leave_out_implicit_masks(tmp, left_out)
            if written is not None:
                written(tmp)
    except OSError as exc:
        raise write_error(out, exc) from exc
    return census


def _check_source_unchanged(source: ModelFile) -> None:
    """The input an .h5 output is copied from must still be the file the run read (exit 3 if not)."""
    if file_identity(source.path) != source.identity:
        raise InputError(
            f"the model file {shown(source.path)} changed while the run worked (it was written, replaced or"
            " removed); nothing was saved: run again on the file as it is now"
        )


def check_h5_writable(model, out: Path) -> set[str]:
    """Refuse an .h5 that Keras 3 would write but not read back: its legacy HDF5 writer stores a graph
    node that calls a Keras operation outside any layer (`h + f(h)`, `keras.ops.add`) in a form its
    reader rejects ("too many positional arguments"), so the run would end with exit 0 and a file no
    one can load. A run checks this right after loading (run/steps.load), before any work; saving
    checks it again for the Python API's own calls. Returns the mask-only operations the file leaves
    out (keras_graph.implicit_mask_operations), which reading it derives again."""
    import keras

    from prunecli.structure import keras_graph

    if keras_graph.functional(model) is None or isinstance(model, keras.Sequential):
        return set()  # a Sequential's file lists its layers, not its graph
    left_out = keras_graph.implicit_mask_operations(model)
    ops = sorted(
        {
            type(n.operation).__name__
            for n in keras_graph.nodes(model)
            if not isinstance(n.operation, keras.Layer) and n.operation.name not in left_out
        }
    )
    if ops:
        raise OutputError(
            f"cannot write {out}: the model calls Keras operations outside layers ({', '.join(ops[:3])}), which"
            " Keras' .h5 format does not read back; write a .keras file instead"
        )
    return left_out


def _leave_out_implicit_masks(path: Path, left_out: set[str]) -> None:
    """Rewrite an .h5 file's model config without the operations that only compute the masks Keras
    passes along by itself (keras_graph.implicit_mask_operations) and without the `mask` arguments they
    fed: Keras 3 records a Masking layer's mask as `not_equal`/`any` nodes, which its .h5 reader cannot
    read ("Unknown layer: 'NotEqual'"), and reading the file derives the same masks again."""
    import json

    import h5py

    def producers(value) -> list[str]:  # the layers whose serialised tensors `value` holds
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return [name for item in items for name in producers(item)]

    def feeds_from_left_out(value) -> bool:
        found = producers(value)
        return bool(found) and all(name in left_out for name in found)

    with h5py.File(path, "r+") as fh:
        config = json.loads(fh.attrs["model_config"])
        layers = [entry for entry in config["config"]["layers"] if entry["name"] not in left_out]
        for entry in layers:
            for call in entry.get("inbound_nodes", []):
                kwargs = call.get("kwargs", {}) if isinstance(call, dict) else {}
                if "mask" in kwargs and feeds_from_left_out(kwargs["mask"]):
                    del kwargs["mask"]
        config["config"]["layers"] = layers
        fh.attrs["model_config"] = json.dumps(config).encode("utf-8")


def _drop_optimizer_state(model) -> None:
    """Keep the optimizer's settings but not its slots: Adam's moments no longer match pruned (or
    shrunk) weights, and saving them can triple the file. The .h5 path drops them the same way."""
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        return
    import keras

    config = model.get_compile_config()
    if config:  # compile() with a fresh optimizer; compile_from_config would build its slots again
        model.compile(**keras.saving.deserialize_keras_object(config))


def write_h5_weights(model, h5_path: Path) -> None:
    """Replace the weight arrays of a legacy-HDF5 model file with the model's current values.

    Follows Keras's legacy layout: the k-th layer that has weights owns `layer_names[k]`, and its
    weights are stored as trainable + non-trainable, in `weight_names` order; a Keras-2 CuDNN layer's
    are written back in its own layout (cudnn.to_cudnn). Optimizer state no longer matches the
    weights, so it is dropped.
    """
    import h5py
    import numpy as np

    with h5py.File(h5_path, "r+") as f:
        group = f["model_weights"] if "model_weights" in f else f
        raw = f.attrs.get("model_config")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
        config = config if isinstance(config, dict) and cudnn.cudnn_layers(config) else None
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
        names = [n for n in names if len(group[n].attrs.get("weight_names", [])) > 0]
        layers = [layer for layer in model.layers if layer.weights]
        if len(names) != len(layers):
            raise OutputError(f"cannot map weights into {h5_path}: {len(layers)} layers vs {len(names)} saved")
        for name, layer in zip(names, layers, strict=True):
            g = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in g.attrs["weight_names"]]
            variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
            if len(weight_names) != len(variables):
                raise OutputError(f"cannot map weights of layer {name} into {h5_path}")
            values = {wname: np.asarray(var) for wname, var in zip(weight_names, variables, strict=True)}
            if config is not None:  # a Keras-2 CuDNN layer's weights go back in the file's own layout
                values = cudnn.write_back(values, config, name, weight_names, h5_path)
            for wname, value in values.items():
                ds = g[wname]
                if ds.shape != value.shape:
                    raise OutputError(f"shape of {wname} changed; cannot write it in place")
                ds[...] = value if value.dtype == ds.dtype else value.astype(ds.dtype)  # no second copy
        if "optimizer_weights" in f:
            del f["optimizer_weights"]
