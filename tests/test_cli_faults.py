"""Faults while running: signals during the save, full disks, too little memory, bugs.

The output is written atomically (model_io.atomic_path): whatever stops the run, the output path
holds either nothing or a complete model, and the input is never touched. Ctrl-C (and SIGTERM)
exit with 130 and one line; SIGKILL may leave a hidden `.STEM.PID.XXXX.tmp.EXT` file, which the
next write to the same output removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunecli.cli import main
from prunecli.errors import ExitCode, ExportError, OutputError
from prunecli.io import models as model_io


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 12 MB model (its save takes long enough to be interrupted) and a tiny one, with data."""
    import keras
    import numpy as np

    d = tmp_path_factory.mktemp("faults")
    keras.utils.set_random_seed(0)
    inp = keras.Input((512,))
    x = keras.layers.Dense(2048, name="wide")(inp)
    x = keras.layers.Dense(1024, name="deep")(x)
    big = keras.Model(inp, keras.layers.Dense(10, name="out")(x))
    big.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    big.save(d / "big.keras")
    big.save(d / "big.h5")
    inp = keras.Input((6,))
    small = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.Dense(8)(inp)))
    small.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    small.save(d / "small.keras")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.standard_normal((200_000, 6)).astype("float32"), y=rng.integers(0, 3, 200_000))
    return d


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECLI_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _signal_while_saving(args: list, out: Path, sig: int):
    """Run `prunecli prune`, and send `sig` the moment the output or its temporary file appears."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunecli", "prune", "--scope", "layer", *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        names = os.listdir(out.parent)
        if out.name in names or any(n.startswith(f".{out.stem}.") for n in names):
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.002)
    if proc.poll() is None and not sent:
        proc.kill()
    stdout, stderr = proc.communicate(timeout=120)
    assert sent, f"the save was never seen (exit {proc.returncode}): {stderr[-2000:]}"
    return proc.returncode, stdout, stderr


def _assert_absent_or_complete(out: Path) -> None:
    """The output is either not there, or a whole model: loadable, with the pruned weights (layer-wise 50%)."""
    if not out.exists():
        return
    import keras

    kernel = keras.saving.load_model(out, compile=False).get_layer("deep").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_sigkill_during_save_leaves_nothing_partial(models, tmp_path):
    src, out = models / "big.keras", tmp_path / "out.keras"
    before = _sha256(src)

    code, _stdout, _stderr = _signal_while_saving([src, "-o", out, "--no-sizes", "-q"], out, signal.SIGKILL)

    assert code == -signal.SIGKILL
    assert _sha256(src) == before
    _assert_absent_or_complete(out)
    stale = _temps(tmp_path)  # SIGKILL cannot be caught: a temporary file may stay behind ...
    assert all(name.startswith(".out.") and name.endswith(".tmp.keras") for name in stale), stale

    rerun = CliRunner().invoke(
        main, ["prune", str(src), "--scope", "layer", "-o", str(out), "--no-sizes", "-q"], catch_exceptions=False
    )

    assert rerun.exit_code == 0, rerun.output
    assert _temps(tmp_path) == []  # ... and the next run writing the same output removes it
    _assert_absent_or_complete(out)
    assert out.exists()


@pytest.mark.slow
def test_sigint_during_save_exits_130_and_cleans_up(models, tmp_path):
    src, out = models / "big.h5", tmp_path / "out.h5"
    before = _sha256(src)

    code, stdout, stderr = _signal_while_saving([src, "-o", out, "--no-sizes"], out, signal.SIGINT)

    assert code == ExitCode.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "prunecli: interrupted"
    assert [line for line in stderr.splitlines() if line.startswith("prunecli:")] == ["prunecli: interrupted"]
    assert "Traceback" not in stderr + stdout
    assert _sha256(src) == before
    assert _temps(tmp_path) == []
    _assert_absent_or_complete(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signals_are_handled_like_ctrl_c(models, tmp_path, sig):
    """`kill`, `timeout` and CI cancellations send SIGTERM, a closed terminal or dropped ssh session
    SIGHUP: same clean exit as Ctrl-C, and the run's own temporary folder is gone (SIGHUP's default
    action used to leave it in $TMPDIR)."""
    out, scratch = tmp_path / "out.keras", tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunecli", "prune", str(models / "big.keras"), "-o", str(out)],
        env={**_env(), "TMPDIR": str(scratch)},
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # a terminal's session, not nohup's
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:  # progress lines: wait until the model is being loaded
        seen.append(line)
        if "loading" in line:
            proc.send_signal(sig)
            break
    _stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest

    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "prunecli: interrupted"
    assert "Traceback" not in stderr
    assert not out.exists() and _temps(tmp_path) == [] and list(scratch.iterdir()) == []


def test_a_hangup_ignored_by_nohup_stays_ignored(monkeypatch):
    """Under `nohup` SIGHUP is ignored before prunecli starts: installing the stop handlers keeps it so.
    SIGINT ignored (a shell's background job) is taken all the same: `kill -INT` still stops the run."""
    from prunecli import interrupts

    saved = {sig: signal.getsignal(sig) for sig in interrupts.STOP_SIGNALS}
    try:
        for sig in interrupts.STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        interrupts.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT) is interrupts._handler
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_only_the_command_lines_own_process_is_frozen_once_tensorflow_is_imported(monkeypatch):
    """A command freezes what its process holds once TensorFlow is imported (after one collection), once:
    later full collections skip it. A library run leaves the caller's objects collectable."""
    import gc

    from prunecli import runtime

    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(runtime._heap, "own_process", False)
    monkeypatch.setattr(runtime._heap, "frozen", False)
    runtime.quiet_tensorflow()  # a library call
    assert calls == []
    assert _invoke("prune", "--help").exit_code == 0  # a command: this process is now the run's own
    runtime.quiet_tensorflow()
    runtime.quiet_tensorflow()
    assert calls == ["collect", "freeze"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class _Memory:
    def __init__(self, available: int):
        self.available = available
        self.total = available


def test_model_larger_than_free_memory_is_a_resource_error(models, tmp_path, monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(1 << 20))  # 1 MiB free

    result = _invoke("prune", models / "big.keras", "-o", tmp_path / "out.keras", "-q")

    assert result.exit_code == ExitCode.RESOURCE
    assert result.stderr.count("\n") == 1
    assert "big.keras is 12 MiB; pruning needs about 36 MiB but only 1 MiB is free" in result.stderr
    assert not (tmp_path / "out.keras").exists()


def test_npz_larger_than_free_memory_is_a_resource_error(models, tmp_path, monkeypatch):
    """The .npz unpacks to about 6 MiB: the small model fits in 4 MiB of free memory, the data does not."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(4 << 20))

    result = _invoke("prune", models / "small.keras", "-d", models / "data.npz", "-o", tmp_path / "o.keras", "-q")

    assert result.exit_code == ExitCode.RESOURCE, result.output
    assert "data.npz unpacks to 6 MiB but only 4 MiB of memory is free" in result.stderr
    assert ".npy files, which are streamed" in result.stderr


def test_out_of_memory_during_the_run_exits_6(models, tmp_path, monkeypatch):
    import prunecli.run.steps

    def exhausted(*_args):
        raise MemoryError()

    monkeypatch.setattr(prunecli.run.steps, "pick_targets", exhausted)

    result = _invoke("prune", models / "small.keras", "-o", tmp_path / "out.keras", "-q")

    assert result.exit_code == ExitCode.RESOURCE
    assert result.stderr == "prunecli: error: out of memory (MemoryError)\n"


def test_disk_full_while_saving_keeps_the_old_output(models, tmp_path, monkeypatch):
    import keras

    out = tmp_path / "out.keras"
    out.write_bytes(b"previous output")

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)

    result = _invoke("prune", models / "small.keras", "-o", out, "-q")

    assert result.exit_code == ExitCode.RESOURCE
    assert result.stderr.startswith("prunecli: error: not enough disk space to write")
    assert out.read_bytes() == b"previous output"
    assert _temps(tmp_path) == []


def test_a_bug_is_one_line_without_traceback(models, tmp_path, monkeypatch):
    import prunecli.run.steps

    def broken(*_args):
        raise RuntimeError("something unexpected\nwith a second line")

    monkeypatch.setattr(prunecli.run.steps, "pick_targets", broken)

    result = _invoke("prune", models / "small.keras", "-o", tmp_path / "out.keras", "-q")

    assert result.exit_code == ExitCode.INTERNAL
    assert result.stderr == (
        "prunecli: internal error: RuntimeError: something unexpected (rerun with --debug for the traceback)\n"
    )


def test_ctrl_c_in_process_is_one_line_and_130(models, tmp_path, monkeypatch):
    import prunecli.run.steps

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(prunecli.run.steps, "pick_targets", interrupted)

    result = _invoke("prune", models / "small.keras", "-o", tmp_path / "out.keras")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.stderr.splitlines()[-1] == "prunecli: interrupted"
    assert "Traceback" not in result.output


def test_atomic_path_keeps_the_target_when_the_write_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")

    with pytest.raises(RuntimeError), model_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")

    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []
    with model_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_path_reports_an_unwritable_folder(tmp_path, monkeypatch):
    """The error names the user's file and the reason, not the temporary name beside it (a folder removed
    mid-run said `[Errno 2] No such file or directory: 'gone/.m.8634.1aa384185c73.tmp.keras'`), and a
    disk with no room left for the temporary file is exit 6 (RESOURCE), as for the model's own bytes."""
    from prunecli.errors import ResourceError

    target = tmp_path / "gone" / "m.keras"
    with pytest.raises(OutputError) as gone, model_io.atomic_path(target):
        pass
    assert str(gone.value) == f"cannot write {target}: No such file or directory"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "touch", full)
    with pytest.raises(ResourceError, match="not enough disk space to write .*m.keras .No space"):
        with model_io.atomic_path(tmp_path / "m.keras"):
            pass


def test_only_temporary_files_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "model.keras"
        stale = tmp_path / f".model.{dead}.0123456789ab.tmp.keras"
        running = tmp_path / f".model.{alive.pid}.def456def456.tmp.keras"
        other_target = tmp_path / f".other.{dead}.0123456789ab.tmp.keras"
        # a user's files that only look like ours: not the exact shape temp_name makes
        users = [
            tmp_path / ".model.99999999.backup.tmp.keras",
            tmp_path / f".model.{dead}.0123456789AB.tmp.keras",
            tmp_path / f".model.{dead}.0123456789a.tmp.keras",
            tmp_path / f".model.0{dead}.0123456789ab.tmp.keras",
        ]
        for p in (stale, running, other_target, *users):
            p.write_bytes(b"partial")
        # an export's scratch folder of a killed run (2.4 MB each, never removed), and a running one's
        stale_export = tmp_path / f".prunecli-export.{dead}.ab_c12x9"
        running_export = tmp_path / f".prunecli-export.{alive.pid}.zz9_8y7x"
        for folder in (stale_export, running_export):
            folder.mkdir()
            (folder / "model.tflite").write_bytes(b"partial")

        removed = model_io.remove_stale_temps(target)

        assert sorted(removed) == sorted([stale, stale_export])
        assert running.exists() and other_target.exists() and all(p.exists() for p in users)
        assert running_export.exists()
        assert model_io.temp_name(target).split(".")[3] != "" and len(model_io.temp_name(target).split(".")[3]) == 12
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("aftermath", [None, AttributeError, ExportError])
def test_a_swallowed_interrupt_still_stops_the_run(models, tmp_path, monkeypatch, aftermath):
    """A SIGTERM whose KeyboardInterrupt Python swallows (inside importlib's module-lock callback:
    "Exception ignored in: <function _get_module_lock.<locals>.cb>") used to let the run finish with
    exit 0: the handler now records the signal, and the next checkpoint stops the run (exit 130,
    nothing written). Simulated deterministically: the handler runs in a finalizer, where Python can only
    print its exception ("Exception ignored in: <function AtomicFunction.__del__>" and a traceback, nine
    lines before the one, when a Ctrl-C landed in TensorFlow's finalizer during the save: no longer
    printed). Swallowed inside TensorFlow's tracing, it left the export half built, and the error that followed
    was the run's verdict (a Ctrl-C during --export savedmodel: "cannot export the model as a
    SavedModel: 'dict' object has no attribute '_type_spec'", exit 7): an error after a stop signal
    is the stop's doing, exit 130 as well."""
    from prunecli import interrupts

    real = model_io.check_memory
    saved = {sig: signal.getsignal(sig) for sig in interrupts.STOP_SIGNALS}
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, which prints

    class Finalized:
        def __del__(self):
            interrupts._handler(signal.SIGTERM, None)

    def swallowed(info, *args, **kwargs):
        Finalized()  # collected at once: the handler's KeyboardInterrupt goes to sys.unraisablehook
        if aftermath is not None:
            raise aftermath("'dict' object has no attribute '_type_spec'")
        return real(info, *args, **kwargs)

    monkeypatch.setattr(model_io, "check_memory", swallowed)
    out = tmp_path / "out.keras"
    try:
        interrupts.install()
        result = _invoke("prune", models / "small.keras", "-o", out, "-q")
    finally:
        interrupts.reset()
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert result.stderr.strip() == "prunecli: interrupted"
    assert not out.exists() and _temps(tmp_path) == []


def _previous_run(models, folder: Path) -> dict[str, str]:
    """A finished run's model, plan, report and TFLite export in `folder`: {name: sha256}."""
    out = folder / "o.keras"
    args = ["prune", models / "small.keras", "-s", "0.3", "-o", out, "--report", folder / "r.json"]
    result = _invoke(*args, "--save-plan", folder / "p.zip", "--export", "tflite", "-q")
    assert result.exit_code == 0, result.output
    return {p.name: _sha256(p) for p in sorted(folder.iterdir())}


def _second_run(models, folder: Path):
    out = folder / "o.keras"
    args = ["prune", models / "small.keras", "-s", "0.9", "-o", out, "--report", folder / "r.json"]
    # --force: the export's name is made from -o, not named by the user, so replacing it needs it
    return _invoke(*args, "--save-plan", folder / "p.zip", "--export", "tflite", "--force", "-q")


@pytest.mark.slow
def test_a_failed_rename_puts_every_output_back(models, tmp_path, monkeypatch):
    """The outputs are renamed into place together (outputs_together): when one rename fails (a target
    the user made immutable), the ones already renamed are put back, so the folder holds the previous
    run's model, plan, report and export, byte for byte, and no temporary file; the error names the
    output that could not be written (exit 5)."""
    from prunecli.io.models import write

    before = _previous_run(models, tmp_path)
    real = write._place  # each new output onto its target: swapped with the old one, or set aside

    def refuse_the_model(tmp, target):  # as an immutable file (chattr +i) refuses to be moved
        if Path(target).name == "o.keras":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(tmp, target)

    monkeypatch.setattr(write, "_place", refuse_the_model)
    result = _second_run(models, tmp_path)
    assert result.exit_code == ExitCode.OUTPUT, result.output
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"prunecli: error: cannot write {tmp_path / 'o.keras'}: Operation not permitted"
    )
    assert {p.name: _sha256(p) for p in sorted(tmp_path.iterdir())} == before
    assert _temps(tmp_path) == []


def test_a_report_that_cannot_be_written_leaves_no_new_model(models, tmp_path):
    """The report is committed with the model: a report on a full device (exit 6, as a full disk) leaves
    no model behind."""
    out = tmp_path / "o.keras"
    result = _invoke("prune", models / "small.keras", "-s", "0.5", "-o", out, "--report", "/dev/full", "-q")
    assert result.exit_code == ExitCode.RESOURCE, result.output
    assert "not enough disk space to write /dev/full" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_library_call_whose_report_cannot_be_written_replaces_no_model(models, tmp_path):
    """prunecli.prune() commits its report with the model as the command does: the call's model was
    renamed into place before its report failed, so a full disk left a new model beside the old report."""
    from prunecli import build_config, prune
    from prunecli.errors import ResourceError

    out, report = tmp_path / "o.keras", tmp_path / "o.json"
    out.write_bytes(b"the previous run's model")
    report.write_text("{}")
    settings = {"model_path": str(models / "small.keras"), "sparsity": 0.5, "scope": "layer", "output": str(out)}
    with pytest.raises(ResourceError, match="/dev/full"):
        prune(build_config({**settings, "force": True, "report": str(report), "markdown": "/dev/full"}))
    assert out.read_bytes() == b"the previous run's model" and report.read_text() == "{}"
    assert _temps(tmp_path) == []


@pytest.mark.slow
def test_a_signal_during_the_renames_stops_the_run_after_all_of_them(models, tmp_path, monkeypatch):
    """A SIGTERM that arrives while the outputs are renamed into place is held until the last rename:
    the run then stops (exit 130) with every output the new run's, consistent with its report, never
    a new model beside the previous report and plan (what an interrupt between two renames left)."""
    from prunecli import interrupts
    from prunecli.io.models import write

    _previous_run(models, tmp_path)
    real = write._place  # each new output onto its target: swapped with the old one, or set aside
    renames = []

    def signalled(tmp, target):
        if not renames:
            os.kill(os.getpid(), signal.SIGTERM)
        renames.append(Path(target).name)
        return real(tmp, target)

    saved = {sig: signal.getsignal(sig) for sig in interrupts.STOP_SIGNALS}
    monkeypatch.setattr(write, "_place", signalled)
    try:
        interrupts.install()
        result = _second_run(models, tmp_path)
    finally:
        interrupts.reset()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    monkeypatch.undo()
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert "interrupted after its outputs were written; they are complete:" in result.stderr
    assert result.stderr.count("\n") == 1 and "o.keras" in result.stderr
    assert {"o.keras", "p.zip", "r.json", "o.tflite"} <= set(renames)
    assert _temps(tmp_path) == []
    checked = _invoke("verify", tmp_path / "o.keras", "--report", tmp_path / "r.json", "--plan", tmp_path / "p.zip")
    assert checked.exit_code == 0, checked.output
    import json

    assert json.loads((tmp_path / "r.json").read_text())["totals"]["prunable_sparsity"] > 0.85
