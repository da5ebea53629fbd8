"""Every path one run reads and writes, planned and checked in one place before any work is done.

Why one place: the model output was checked against the input, but `--report` naming the input, the
data or the recipe overwrote it with JSON, and a FIFO, a device node or a symbolic link named as an
output was replaced by the temp-and-rename write. Here every write is compared with every read and
with every other write, before TensorFlow is imported.

Decisions (documented in the README, "Outputs"):
  * Two paths are the same file when their resolved paths are equal, or `os.path.samefile` says so
    (hard links, `dir/../x`, symbolic links). A write onto a read is refused (exit 5); only the model
    output may replace the input model, and only with `--force` on the command line.
  * A write target that is a symbolic link is refused: the rename would replace the link, and writing
    through it would change a file the user did not name. Name the real file instead.
  * A special file (FIFO, device, socket) is never replaced. The model, exports and sweep outputs
    need a regular file and refuse it. The report and the Markdown summary may be written *in place*
    to a character device or a FIFO (`--report /dev/null`, `--report /dev/stdout`): opened without
    O_CREAT, never renamed over; a FIFO without a reader is refused (O_NONBLOCK), never waited on.
    `-` means stdout.
  * Reads: a FIFO, device or socket given as the model, `--data`, the recipe or `--feature-names`
    is refused (reading it would block or never end).
  * A name the user did not give (MODEL.pruned.EXT without -o, every --export name, the sweep's
    sweep/sweep.* without -o or --name) never replaces an existing file or folder: exit 5, unless
    `--force` (io.models.resolve_output checks the model's).
  * `sweep --name` is a file name, not a path: `/`, `..` and NUL are refused, so nothing is written
    outside `-o`; files of its names already in `-o` are replaced only when they are an earlier sweep's.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.errors import ConfigError, DataError, ModelLoadError, OutputError, UsageError, write_error
from prunecli.messages import shown

STDOUT = "-"
SWEEP_KINDS = ("json", "csv", "png", "md")


@dataclass(frozen=True)
class PlannedWrite:
    """One file the run writes. `in_place`: a special file written without temp-and-rename."""

    role: str
    path: Path
    in_place: bool = False
    is_dir: bool = False


@dataclass
class PathPlan:
    """What the run reads and writes, after `plan()` checked them."""

    reads: dict[str, list[Path]] = field(default_factory=dict)
    writes: dict[str, PlannedWrite] = field(default_factory=dict)
    stdout_roles: list[str] = field(default_factory=list)

    def write(self, role: str) -> Path | None:
        t = self.writes.get(role)
        return None if t is None else t.path


def _lstat(p: Path):
    try:
        return os.lstat(p)
    except (OSError, ValueError):
        return None


def _stat(p: Path):
    try:
        return os.stat(p)
    except (OSError, ValueError):
        return None


def _resolved(p: Path) -> Path:
    try:
        return Path(os.path.realpath(p))
    except (OSError, ValueError):
        return Path(os.path.abspath(p))


def same_file(a: Path, b: Path) -> bool:
    """Same resolved path, or the same inode (hard links): both checks, as either may miss."""
    if _resolved(a) == _resolved(b):
        return True
    sa, sb = _stat(a), _stat(b)
    return bool(sa and sb and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino))


def _kind(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def check_readable(path, role: str, error=DataError) -> None:
    """A special file as an input is refused: a FIFO blocks, /dev/zero never ends."""
    st = _stat(Path(path))
    if st is not None:
        what = _kind(st.st_mode)
        if what:
            raise error(f"{role} {shown(path)} is not a regular file (it is {what})")


def _check_write(role: str, path: Path, allow_special: bool) -> PlannedWrite:
    """A write target: not a symbolic link, not a directory, a special file only in place."""
    lst = _lstat(path)
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        real = _stat(path)
        if allow_special and real is not None and _kind(real.st_mode) in ("a FIFO", "a device"):
            return _special_target(role, path, real)
        raise OutputError(
            f"{role} {shown(path)} is a symbolic link; prunecli does not replace links or write through them "
            "(name the file itself)"
        )
    if lst is not None:
        if stat.S_ISDIR(lst.st_mode):
            raise OutputError(f"{role} {shown(path)} is a directory")
        what = _kind(lst.st_mode)
        if what:
            if allow_special and what in ("a FIFO", "a device"):
                return _special_target(role, path, lst)
            raise OutputError(f"{role} {shown(path)} is {what}; prunecli writes {role}s to regular files only")
    parent = path.parent  # as given: the absolute path of a relative one may be longer than PATH_MAX
    if not parent.is_dir():
        raise OutputError(f"{role} directory does not exist: {shown(parent)}")
    name_max = _name_max(parent)
    if len(os.fsencode(path.name)) > name_max:
        raise OutputError(f"{role} file name is longer than {name_max} bytes: {shown(path.name)[:60]}...")
    return PlannedWrite(role, path)


def _special_target(role: str, path: Path, st) -> PlannedWrite:
    if stat.S_ISFIFO(st.st_mode):
        try:  # a FIFO with no reader: ENXIO at once, instead of blocking until someone reads
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OutputError(f"{role} {shown(path)} is a FIFO that nobody reads") from exc
            raise OutputError(f"cannot write {role} {shown(path)}: {exc.strerror}") from exc
        # kept open until write_text: closing it now would give the reader its end of file
        old = _held_fifos.pop(os.path.abspath(path), None)
        if old is not None:
            os.close(old)
        _held_fifos[os.path.abspath(path)] = fd
    elif not os.access(path, os.W_OK):
        raise OutputError(f"{role} {shown(path)} is a device that is not writable")
    return PlannedWrite(role, path, in_place=True)


_held_fifos: dict[str, int] = {}  # FIFO outputs opened by plan(), written by write_text()


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_sweep_name(name: str) -> None:
    """A file name stem: nothing that climbs out of -o or names another folder."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ConfigError(f"--name {shown(name)!r} must be a plain file name (no '/', not '.' or '..')")
    if (os.altsep and os.altsep in name) or not shown(name) == name:
        raise ConfigError(f"--name {shown(name)!r} must be a plain file name of printable characters")


def export_paths(out: Path) -> dict[str, Path]:
    """Where each --export format goes, beside the output model."""
    return {
        "tflite": out.with_name(f"{out.stem}.tflite"),
        "tflite-int8": out.with_name(f"{out.stem}.int8.tflite"),
        "savedmodel": out.with_name(f"{out.stem}_savedmodel"),
    }


def plan(
    config,
    *,
    output_model: str | os.PathLike | None = None,
    sweep_dir: str | os.PathLike | None = None,
    sweep_name: str | None = None,
    sweep_named: bool = True,
    recipe: str | os.PathLike | None = None,
    extra_reads: dict | None = None,
    exports: dict | None = None,
) -> PathPlan:
    """Resolve and check every path of a run; raises a one-line error (exit 2, 3 or 5) or returns the plan.

    `output_model`: the resolved model output for `prune` (io.models.resolve_output's answer, or None
    for plan/sweep); `sweep_dir`/`sweep_name`: the sweep's -o and --name, `sweep_named` False when the
    user gave neither (the default `sweep/sweep.*` replaces no existing file without --force); `recipe`: the -c file;
    `extra_reads`: {role: [paths]} the data loader reads besides --data (io.data.files_read: the .npy
    labels file, a TFRecord spec); `exports`: {format: path} (export_paths(output)).
    Checks, in order: reads are not special files; writes are not links, directories or (except
    report/markdown, in place) special files; no write is the same file as a read or another write
    (the model output may be the input model only with --force).
    """
    p = PathPlan()
    model = _plan_reads(p, config, recipe, extra_reads)
    if output_model is not None:
        _plan_model_writes(p, config, Path(output_model), exports or {})
    _plan_reports(p, config)
    if sweep_dir is not None:
        _plan_sweep(p, Path(sweep_dir), "sweep" if sweep_name is None else sweep_name)
    if len(p.stdout_roles) > 1:
        raise UsageError("--report - and --markdown - would both write to stdout; send one to a file")

    _check_collisions(p, model, force=bool(getattr(config, "force", False)))
    quiet = bool(getattr(config, "quiet", False))
    if p.stdout_roles or not quiet:
        _check_stream(p, "standard output", "stdout")
    if not quiet:  # progress lines; an error is printed only when nothing is replaced
        _check_stream(p, "standard error", "stderr")
    _check_formats(p)
    from prunecli.io.models.write import expect_unchanged

    expect_unchanged(t.path for t in p.writes.values() if not t.in_place)  # replaced at the end only as it is now
    if sweep_dir is not None and _lstat(Path(sweep_dir)) is not None:  # after: a read it would replace says so first
        name = "sweep" if sweep_name is None else sweep_name
        if not sweep_named and not getattr(config, "force", False):
            _check_default_sweep(Path(sweep_dir), name)
        check_earlier_sweep(Path(sweep_dir), name)
    return p


def _plan_reads(p: PathPlan, config, recipe, extra_reads: dict | None) -> Path | None:
    """Record every file the run reads, refusing special files; returns the input model's path.
    A --data glob is recorded with no paths: it names no single file to compare the writes with."""
    model = Path(config.model_path) if config.model_path else None
    if model is not None:
        check_readable(model, "model file", ModelLoadError)
        p.reads["model"] = [model]
    if config.data:
        check_readable(config.data, "data file", DataError)
        p.reads["data"] = [] if any(ch in str(config.data) for ch in "*?[") else [Path(config.data)]
    for role, paths in (extra_reads or {}).items():
        p.reads.setdefault(role, []).extend(Path(x) for x in paths)
    if recipe:
        check_readable(recipe, "recipe", UsageError)
        p.reads["recipe"] = [Path(recipe)]
    if config.feature_names:
        check_readable(config.feature_names, "feature names file", DataError)
        p.reads["feature_names"] = [Path(config.feature_names)]
    if getattr(config, "teacher", None):
        check_readable(config.teacher, "teacher model file", ModelLoadError)
        p.reads["teacher"] = [Path(config.teacher)]
    code = [found for c in getattr(config, "custom_objects", ()) or () for found in custom_code_paths(c)]
    if code:
        p.reads["custom_objects"] = code
    return model


def custom_code_paths(source: str) -> list[Path]:
    """The files a --custom-objects source runs: a `.py` path itself, or for a module name (`layers`,
    `pkg.layers`) the files `python` would import for it from the current directory or sys.path
    (pkg/__init__.py, pkg/layers.py). Found by path, nothing imported here: `--report layers.py
    --custom-objects layers` replaced the user's code."""
    import importlib.machinery
    import sys

    if Path(source).is_file():
        return [Path(source)]
    parts = source.split(".")
    if not all(part.isidentifier() for part in parts):
        return []
    found, search = [], [os.getcwd(), *sys.path]
    for depth in range(1, len(parts) + 1):
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), search)
        except (ImportError, OSError, ValueError):
            spec = None
        if spec is None:
            break
        if spec.origin and os.path.isfile(spec.origin):
            found.append(Path(spec.origin))
        search = list(spec.submodule_search_locations or [])
    return found


def _plan_model_writes(p: PathPlan, config, out: Path, exports: dict) -> None:
    """The model output and each --export beside it: regular files, except the SavedModel folder."""
    p.writes["output"] = _check_write("output", out, allow_special=False)
    if getattr(config, "save_plan", None):
        if str(config.save_plan) == STDOUT:  # it wrote a zip file named "-", where --report - means stdout
            raise UsageError(
                "--save-plan needs a file name: a plan is a zip file ('-' is stdout for --report, --markdown)"
            )
        p.writes["plan"] = _check_write("plan", Path(config.save_plan), allow_special=False)
    force = bool(getattr(config, "force", False))
    for fmt in config.export or ():
        target = exports.get(fmt)
        if target is None:
            continue
        role = f"export {fmt}"
        _check_named_after_output(role, target, force)
        if fmt == "savedmodel":
            p.writes[role] = _savedmodel_target(role, target)
        else:
            p.writes[role] = _check_write(role, target, allow_special=False)


def _check_named_after_output(role: str, target: Path, force: bool) -> None:
    """An export's name is made from the output's, never given by the user: an existing file or folder
    there (an earlier run's export, or the user's own `model.tflite`) is replaced only with --force."""
    if not force and _lstat(target) is not None:
        raise OutputError(
            f"{role} {shown(target)} already exists (its name is made from the output's): pass another -o,"
            " or --force to replace it"
        )


def _savedmodel_target(role: str, target: Path) -> PlannedWrite:
    """A SavedModel is a folder, and an export replaces it whole (with --force, `_check_named_after_output`):
    only a real folder holding nothing but a SavedModel's parts, never a file or a link."""
    lst = _lstat(target)
    if lst is not None and (stat.S_ISLNK(lst.st_mode) or not stat.S_ISDIR(lst.st_mode)):
        raise OutputError(f"{role} {shown(target)} exists and is not a folder")
    if lst is not None:
        _check_only_savedmodel_inside(role, target)
    return PlannedWrite(role, target, is_dir=True)


def _check_only_savedmodel_inside(role: str, target: Path) -> None:
    """--force replaces an earlier run's SavedModel export whole, never a folder of that name holding
    anything else (the user's notes beside it were deleted with it): the export's name is made from the
    output's, so --force cannot have meant the user's own files."""
    from prunecli.io.models.metadata import SAVED_MODEL_PARTS

    try:
        foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in SAVED_MODEL_PARTS)
    except OSError:  # no folder there (or not readable: the write reports that)
        return
    if foreign:
        shown_names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"{role} {shown(target)} holds files a SavedModel does not ({shown_names}): replacing it would"
            " delete them, even with --force; move them, or pass another -o"
        )


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies inside `folder` (links resolved), so replacing the folder would remove it."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def _plan_reports(p: PathPlan, config) -> None:
    """--report and --markdown: `-` is stdout; a FIFO or a device is written in place."""
    for role, value in (("report", config.report), ("markdown summary", config.markdown)):
        if not value:
            continue
        if value == STDOUT:
            p.stdout_roles.append(role)
            continue
        p.writes[role] = _check_write(role, Path(value), allow_special=True)


def _plan_sweep(p: PathPlan, folder: Path, name: str) -> None:
    """The sweep's files in -o (a folder, or a link to one; created later when missing), one per kind."""
    check_sweep_name(name)
    lst = _lstat(folder)
    if lst is not None and not stat.S_ISDIR(lst.st_mode):
        real = _stat(folder)
        if real is None or not stat.S_ISDIR(real.st_mode):
            raise OutputError(f"sweep output folder {shown(folder)} exists and is not a folder")
    for kind in SWEEP_KINDS:
        target = folder / f"{name}.{kind}"
        if _lstat(folder) is None:  # the folder is created later; its files cannot exist yet
            p.writes[f"sweep {kind}"] = PlannedWrite(f"sweep {kind}", target)
        else:
            p.writes[f"sweep {kind}"] = _check_write(f"sweep {kind}", target, allow_special=False)


def _check_default_sweep(folder: Path, name: str) -> None:
    """A sweep run without -o or --name writes to the default folder and names: an earlier sweep's
    files there (another model's, other sparsities) are replaced only when the user says so."""
    for kind in SWEEP_KINDS:
        if _lstat(folder / f"{name}.{kind}") is not None:
            raise OutputError(
                f"sweep {shown(folder / f'{name}.{kind}')} already exists and neither -o nor --name was given"
                " (the default names): pass -o or --name, or --force to replace it"
            )


def check_earlier_sweep(folder: Path, name: str) -> None:
    """A sweep replaces the four files of an earlier sweep of the same --name (its NAME.json says it is
    one), never files of the user's that happen to share the names (`-o . --name README` would have
    replaced README.md; `-o` names a folder, not these files)."""
    import json

    present = [folder / f"{name}.{kind}" for kind in SWEEP_KINDS if _lstat(folder / f"{name}.{kind}") is not None]
    if not present:
        return
    try:
        ours = json.loads((folder / f"{name}.json").read_text(encoding="utf-8")).get("kind") == "sweep"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise OutputError(
            f"sweep would replace {shown(present[0])}, which no earlier sweep wrote (no sweep's {name}.json beside"
            " it): give another --name or -o"
        )


def _check_collisions(p: PathPlan, model: Path | None, force: bool) -> None:
    reads = [(role, path) for role, paths in p.reads.items() for path in paths]
    writes = [t for t in p.writes.values() if not t.in_place]
    for t in writes:
        for role, path in reads:
            if t.is_dir and _inside(path, t.path):
                raise OutputError(
                    f"{t.role} {shown(t.path)} is replaced whole, and the {_read_name(role)} is inside it"
                )
            if _replaces_inside(t.path, path):  # a SavedModel's saved_model.pb, an image of --data
                raise OutputError(
                    f"{t.role} {shown(t.path)} is inside {shown(path)} (the {_read_name(role)}), a folder the run"
                    " reads: write it elsewhere"
                )
            if same_file(t.path, path):
                if t.role == "output" and role == "model" and force:
                    continue
                hint = "; choose another -o or pass --force" if (t.role, role) == ("output", "model") else ""
                raise OutputError(f"{t.role} {shown(t.path)} would overwrite the {_read_name(role)}{hint}")
    for i, a in enumerate(writes):
        for b in writes[i + 1 :]:
            if same_file(a.path, b.path):
                raise OutputError(f"{a.role} and {b.role} are the same file: {shown(a.path)}")
    for a in writes:  # a report written into the folder an export replaces whole would go with the old folder
        for b in writes:
            if a is not b and a.is_dir and _inside(b.path, a.path):
                raise OutputError(
                    f"{b.role} {shown(b.path)} is inside {shown(a.path)}, which the {a.role} replaces whole"
                )


# A file name's suffix and the format it promises; a report, summary or plan named for another format
# (`-r r.md --markdown r.json`, options swapped) was written with exit 0, JSON in the .md and Markdown in
# the .json, for whatever reads them by their names to fail on or misread.
SUFFIX_FORMATS = {
    ".json": "JSON",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".keras": "a Keras model",
    ".h5": "an HDF5 file",
    ".hdf5": "an HDF5 file",
    ".tflite": "a TFLite model",
    ".zip": "a zip archive",
    ".npz": "NumPy data",
    ".npy": "NumPy data",
    ".yaml": "YAML",
    ".yml": "YAML",
    ".csv": "CSV",
}
WRITTEN_FORMATS = {  # role: (its option, what it writes, the suffix that says so)
    "report": ("--report", "JSON", ".json"),
    "markdown summary": ("--markdown", "Markdown", ".md"),
    "plan": ("--save-plan", "a zip archive", ".zip"),
}


def _check_formats(p: PathPlan) -> None:
    """Refuse (exit 2) a report, Markdown summary or plan whose name's suffix promises another format
    (SUFFIX_FORMATS); a suffix not in that table (`.plan`, `.txt`, none) names no format and is written."""
    for role, (flag, written, suffix) in WRITTEN_FORMATS.items():
        t = p.writes.get(role)
        said = None if t is None or t.in_place else SUFFIX_FORMATS.get(t.path.suffix.lower())
        if said is not None and said != written:
            raise UsageError(f"{flag} writes {written}, but {shown(t.path)} is named for {said}: give a {suffix} name")


def _check_stream(p: PathPlan, name: str, stream: str) -> None:
    """Standard output or error redirected onto a file the run replaces (`prunecli prune m.keras -o o.keras
    -r - > o.keras`, `... --markdown r.md 2> r.md`): what the run printed went into the old file, which the
    commit then swapped out and deleted, so the report, table or progress was lost with exit 0. Refused
    before any work."""
    import sys

    try:
        st = os.fstat(getattr(sys, stream).fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's buffer, a closed stream)
        return
    if not stat.S_ISREG(st.st_mode):
        return
    for t in p.writes.values():
        found = None if t.in_place else _stat(t.path)
        if found is not None and (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino):
            raise OutputError(
                f"{name} is the {t.role} {shown(t.path)}, which the run replaces: what it prints"
                f" there would be lost; redirect {name} elsewhere"
            )


def _replaces_inside(target: Path, folder: Path) -> bool:
    """Whether writing `target` changes what the run reads from `folder` (a SavedModel input, an image or
    TFRecord folder): it replaces an entry there, or lands in a subfolder (an image class, variables/).
    A new file at the folder's top level, which no reader lists, is allowed."""
    if not os.path.isdir(folder) or not _inside(target, folder):
        return False
    top = Path(os.path.realpath(Path(os.path.abspath(target)).parent)) == Path(os.path.realpath(folder))
    return _lstat(target) is not None or not top


def _read_name(role: str) -> str:
    return {
        "model": "input",
        "data": "data file",
        "recipe": "recipe",
        "feature_names": "feature names file",
        "plan": "plan file",
        "teacher": "teacher model file",
        "custom_objects": "--custom-objects code",
    }.get(role, role)


# ---------------------------------------------------------------------------------------------
# writing


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path`: '-' is stdout, a FIFO or device is written in place (never replaced),
    anything else atomically (temporary file beside it, then rename). Text that holds undecodable
    file-name bytes (surrogate escapes) is written with U+FFFD in their place: valid UTF-8 always."""
    from prunecli.io.models import atomic_path, write_in_place

    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if str(path) == STDOUT:  # a closed pipe is handled once, by the CLI's entry point
        write_in_place(lambda: _print(text))
        return
    target = Path(path)
    st = _stat(target)
    if st is not None and _kind(st.st_mode) in ("a FIFO", "a device"):
        write_in_place(lambda: _write_special(target, text))
        return
    if _lstat(target) is not None and stat.S_ISLNK(_lstat(target).st_mode):
        raise OutputError(f"{shown(target)} is a symbolic link; prunecli does not replace links")
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _print(text: str) -> None:
    """`text` on standard output; to a pipe, through _write_all, so that a reader that stops reading
    does not hold off a stop signal (`prunecli prune ... -r - | slow-reader`)."""
    import sys

    text = text if text.endswith("\n") else text + "\n"
    fd = _pipe_of(sys.stdout)
    if fd is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    sys.stdout.flush()
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    _write_all(fd, text.encode(encoding, getattr(sys.stdout, "errors", None) or "strict"))


def _pipe_of(stream) -> int | None:
    """The file descriptor behind `stream` when it is a pipe or FIFO (a reader that can stall), else None."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # a test's buffer, a closed stream
        return None


def _write_special(target: Path, text: str) -> None:
    """`text` into a FIFO or device, in place (opened at plan time when it is a FIFO: _held_fifos)."""
    try:
        fd = _held_fifos.pop(os.path.abspath(target), None)
        if fd is None:
            fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            _write_all(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(shown(target), exc) from exc  # a full device is exit 6, as a full disk


STALL_WAIT_S = 0.1  # how long a write to a FIFO whose reader stalls waits for room before it looks for a stop


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` into a pipe, FIFO or device, at most PIPE_BUF bytes a write and each once the file
    is ready for it, so no write blocks (the descriptor may be blocking: standard output, whose flags are
    shared with other processes, is left as it is). A reader slower than us is waited for; while it
    reads nothing (a full pipe buffer, 64 KiB on Linux), a stop signal ends the wait (KeyboardInterrupt):
    this write is part of the commit, which records stop signals instead of raising them
    (io.models.outputs_together), so a blocking write to a reader that never read held off Ctrl-C and
    SIGTERM for good. The commit then puts every output back as it was."""
    import select

    from prunecli import interrupts

    ready = select.poll()
    ready.register(fd, select.POLLOUT)
    view = memoryview(data)
    while view:
        if not ready.poll(STALL_WAIT_S * 1000):
            interrupts.checkpoint()
            continue
        try:
            view = view[os.write(fd, view[: select.PIPE_BUF]) :]
        except BlockingIOError:  # ready, and yet full: another writer took the room
            continue
