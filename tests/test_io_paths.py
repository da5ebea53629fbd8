"""io.paths: every write checked against every read and every other write; special files and links
are never replaced; names and messages (issue 18). Pure Python: no TensorFlow here."""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
from pathlib import Path

import pytest

from prunecli.cli import _emit_report
from prunecli.config import build_config
from prunecli.errors import ConfigError, DataError, OutputError, UsageError
from prunecli.io import paths
from prunecli.io.models import atomic_path, temp_name
from prunecli.messages import shown


@pytest.fixture
def files(tmp_path):
    for name in ("m.keras", "d.npz", "r.yaml", "names.txt", "layers.py"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _config(files, **cli):
    return build_config({"model_path": str(files / "m.keras"), **cli}, environ={})


@pytest.mark.parametrize(
    "option, target, message",
    [
        ("report", "m.keras", "would overwrite the input"),
        ("report", "d.npz", "would overwrite the data file"),
        ("markdown", "r.yaml", "would overwrite the recipe"),
        ("markdown", "names.txt", "would overwrite the feature names file"),
        ("report", "out.keras", "output and report are the same file"),
        ("save_plan", "layers.py", "would overwrite the --custom-objects code"),  # the user's code was lost
        ("report", "layers.py", "would overwrite the --custom-objects code"),
        ("report", "mymod.py", "would overwrite the --custom-objects code"),  # named as a module: the same
        ("markdown", "pkg/__init__.py", "would overwrite the --custom-objects code"),
        ("save_plan", "pkg/layers.py", "would overwrite the --custom-objects code"),
    ],
)
def test_a_write_onto_a_read_or_another_write_is_refused(files, option, target, message, monkeypatch):
    (files / "mymod.py").write_text("")
    (files / "pkg").mkdir()
    (files / "pkg" / "__init__.py").write_text("")
    (files / "pkg" / "layers.py").write_text("")
    monkeypatch.chdir(files)  # module names are imported from the current folder first, as python does
    c = _config(
        files,
        data=str(files / "d.npz"),
        feature_names=str(files / "names.txt"),
        custom_objects=(str(files / "layers.py"), "json", "mymod", "pkg.layers"),
        **{option: str(files / target)},
    )
    with pytest.raises(OutputError, match=message):
        paths.plan(c, output_model=files / "out.keras", recipe=files / "r.yaml")


@pytest.mark.parametrize("option", ["report", "markdown", "save_plan", "output"])
def test_a_write_inside_a_folder_the_run_reads_is_refused(tmp_path, option):
    """A SavedModel folder as the model, or an image folder as --data: `--report sm/saved_model.pb`
    replaced the input model's graph, and a report written among the images became a bad image. A new
    file at a read folder's top level, which no reader lists, is written."""
    model, images = tmp_path / "sm", tmp_path / "images"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (images / "cat").mkdir(parents=True)
    config = build_config({"model_path": str(model), "data": str(images)}, environ={})
    for inside, what in [(model / "saved_model.pb", "the input"), (images / "cat" / "new.keras", "the data file")]:
        output = inside if option == "output" else tmp_path / "o.keras"
        c = config.replace(**({} if option == "output" else {option: str(inside)}))
        with pytest.raises(OutputError, match=f"is inside .* \\({what}\\), a folder the run reads"):
            paths.plan(c, output_model=output)
    assert (model / "saved_model.pb").read_bytes() == b"graph"
    top = images / {"report": "new.json", "markdown": "new.md", "save_plan": "new.zip"}.get(option, "new.keras")
    output = top if option == "output" else tmp_path / "o.keras"
    paths.plan(config.replace(**({} if option == "output" else {option: str(top)})), output_model=output)


def test_hard_links_and_other_spellings_are_the_same_file(files):
    os.link(files / "d.npz", files / "alias.npz")
    (files / "sub").mkdir()
    c = _config(files, data=str(files / "d.npz"), report=str(files / "alias.npz"))
    with pytest.raises(OutputError, match="data file"):
        paths.plan(c, output_model=files / "o.keras")
    c = _config(files, report=str(files / "sub" / ".." / "m.keras"))
    with pytest.raises(OutputError, match="input"):
        paths.plan(c, output_model=files / "o.keras")


def test_force_lets_only_the_model_output_replace_the_input(files):
    c = _config(files, force=True)
    assert paths.plan(c, output_model=files / "m.keras").write("output") == files / "m.keras"
    c = _config(files, force=True, report=str(files / "m.keras"))
    with pytest.raises(OutputError, match="would overwrite the input"):
        paths.plan(c, output_model=files / "o.keras")


def test_a_report_summary_or_plan_named_for_another_format_is_refused(files):
    """`-r r.md --markdown r.json` (the options swapped) wrote JSON into r.md and Markdown into r.json with
    exit 0; a suffix that names no format (.plan, .txt) or says the right one in capitals is written."""
    with pytest.raises(UsageError, match=r"--report writes JSON, but .*r\.md is named for Markdown: give a \.json"):
        paths.plan(_config(files, report=str(files / "r.md")), output_model=files / "o.keras")
    with pytest.raises(UsageError, match=r"--save-plan writes a zip archive, but .*p\.json is named for JSON"):
        paths.plan(_config(files, save_plan=str(files / "p.json")), output_model=files / "o.keras")
    fine = _config(files, report=str(files / "r.JSON"), markdown=str(files / "s.txt"), save_plan=str(files / "p.plan"))
    assert paths.plan(fine, output_model=files / "o.keras").writes["plan"].path.name == "p.plan"


def test_links_are_never_replaced_or_written_through(files):
    os.symlink(files / "names.txt", files / "link.json")
    c = _config(files, report=str(files / "link.json"))
    with pytest.raises(OutputError, match="symbolic link"):
        paths.plan(c, output_model=files / "o.keras")
    assert (files / "link.json").is_symlink() and (files / "names.txt").read_bytes() == b"x"


def test_a_fifo_without_reader_is_refused_at_once_and_one_with_a_reader_is_written_in_place(files):
    fifo = files / "pipe.json"
    os.mkfifo(fifo)
    c = _config(files, report=str(fifo))
    with pytest.raises(OutputError, match="nobody reads"):
        paths.plan(c, output_model=files / "o.keras")

    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    for _ in range(200):  # the reader's open() must come first, or the writer would see no reader
        try:
            plan = paths.plan(c, output_model=files / "o.keras")
            break
        except OutputError:
            threading.Event().wait(0.01)
    assert plan.writes["report"].in_place
    paths.write_text(fifo, '{"ok": true}\n')
    reader.join(5)
    assert json.loads(got[0]) == {"ok": True}
    assert fifo.is_fifo()


@pytest.mark.parametrize("report", ["fifo", "stdout pipe", "summary table"])
def test_a_report_whose_reader_stalls_gives_way_to_a_stop_signal_and_the_outputs_stay_as_they_were(
    files, monkeypatch, report
):
    """A FIFO given as --report, or `-r -` into a pipe, whose reader never reads: the report (over the
    64 KiB a pipe holds) blocked in a write that the commit makes with stop signals held off, so Ctrl-C
    never ended the run. The write now waits for room a tenth of a second at a time and gives way to the
    stop: KeyboardInterrupt (exit 130), the model renamed in before it put back, no temporary file.
    The summary table `prunecli prune` prints without -r (rich wrote it, blocking) goes the same way: here
    into a pipe already full, as a table of many layers fills it."""
    import signal
    import time

    from prunecli import interrupts
    from prunecli.io.models import outputs_together

    out = files / "o.keras"
    out.write_text("old model")
    if report == "fifo":
        target = files / "pipe.json"
        os.mkfifo(target)
        reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # holds the FIFO open, reads nothing
    else:
        target, (reader, writer) = "-", os.pipe()
        stdout = os.fdopen(writer, "w")
        monkeypatch.setattr("sys.stdout", stdout)
    if report == "summary table":
        os.set_blocking(writer, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(writer, b"x" * select.PIPE_BUF)
        os.set_blocking(writer, True)
    stop = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))

    def drain():  # after 5 s, so that a write that ignores the stop fails this test instead of hanging it
        os.set_blocking(reader, True)
        while os.read(reader, 1 << 16):
            pass

    rescue = threading.Timer(5, drain)
    rescue.start()
    try:
        with interrupts.handlers_kept():
            interrupts.install()
            config = _config(files, **({} if report == "summary table" else {"report": str(target)}))
            paths.plan(config, output_model=out)
            start = time.monotonic()
            stop.start()
            with pytest.raises(KeyboardInterrupt), outputs_together():
                with atomic_path(out) as tmp:
                    tmp.write_text("new model")
                if report == "summary table":
                    _emit_report(_one_layer_report(), config)
                else:
                    paths.write_text(target, "x" * (1 << 20))
            assert time.monotonic() - start < 2
    finally:
        stop.cancel()
        rescue.cancel()
        interrupts.reset()
        os.close(reader)
        if report != "fifo":
            monkeypatch.undo()
            stdout.close()
    assert out.read_text() == "old model"
    assert sorted(p.name for p in files.iterdir() if ".tmp" in p.name) == []


def _one_layer_report():
    from prunecli.outputs.report import LayerStat, Report

    totals = {"params": 8, "nonzeros": 4, "sparsity": 0.5}
    totals.update({f"prunable_{k}": v for k, v in totals.items()})
    layer = LayerStat("dense/kernel", "dense", "Dense", [2, 4], 8, 4, 0.5)
    return Report(settings={}, input={"path": "m.keras", "format": "keras"}, totals=totals, layers=[layer])


def test_dev_null_is_written_in_place_and_never_replaced():
    target = Path("/dev/null")
    if not target.exists():
        pytest.skip("no /dev/null")
    paths.write_text(target, "report\n")
    assert target.is_char_device()


def test_special_files_as_inputs_are_refused_not_read(files):
    os.mkfifo(files / "fifo.npz")
    with pytest.raises(DataError, match="not a regular file"):
        paths.plan(_config(files, data=str(files / "fifo.npz")))


@pytest.mark.parametrize("name", ["../x", "../../escaped", "a/b", "..", ".", "", "bad\nname"])
def test_a_sweep_name_is_a_file_name(files, name):
    with pytest.raises(ConfigError, match="plain file name"):
        paths.plan(_config(files), sweep_dir=files / "sw", sweep_name=name)


def test_a_sweep_replaces_an_earlier_sweeps_files_never_the_users(files):
    """`sweep -o . --name README` would have replaced the user's README.md: files sharing a sweep's names
    are replaced only when the NAME.json beside them is a sweep's."""
    folder = files / "results"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    with pytest.raises(OutputError, match=r"sweep would replace .*README\.md, which no earlier sweep wrote"):
        paths.plan(_config(files), sweep_dir=folder, sweep_name="README")
    assert (folder / "README.md").read_text() == "my notes\n"
    (folder / "sweep.json").write_text('{"kind": "sweep", "points": []}')
    (folder / "sweep.md").write_text("an earlier sweep's table\n")
    planned = paths.plan(_config(files), sweep_dir=folder, sweep_name="sweep")
    assert planned.write("sweep md") == folder / "sweep.md"
    paths.plan(_config(files), sweep_dir=folder, sweep_name="fresh")  # names no file: nothing to check
    # neither -o nor --name given: the default sweep/sweep.* replaces even an earlier sweep's only with --force
    with pytest.raises(OutputError, match=r"sweep .*sweep\.json already exists and neither -o nor --name was given"):
        paths.plan(_config(files), sweep_dir=folder, sweep_name="sweep", sweep_named=False)
    paths.plan(_config(files, force=True), sweep_dir=folder, sweep_name="sweep", sweep_named=False)
    from prunecli.run.sweep_outputs import write_outputs

    with pytest.raises(OutputError, match="which no earlier sweep wrote"):  # the Python API checks the same
        write_outputs(None, folder, "README")
    assert (folder / "README.md").read_text() == "my notes\n"


def test_messages_escape_newlines_and_undecodable_bytes():
    assert shown("a\nprunecli: error: fake") == "a\\nprunecli: error: fake"
    assert shown(os.fsdecode(b"model_\xff.keras")) == "model_\\xff.keras"


def test_a_242_byte_name_gets_a_temporary_name_within_the_limit(tmp_path):
    target = tmp_path / ("n" * 236 + ".keras")
    assert len(target.name) == 242
    assert len(temp_name(target)) <= 255
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_relative_paths_in_a_folder_deeper_than_path_max_are_planned_and_written(tmp_path, monkeypatch):
    """In a working folder whose absolute path is longer than PATH_MAX (4096 bytes), `prune m.keras -r
    r.json` was an internal error (exit 1) and `-o o.keras` "File name too long": the checks made each
    relative path absolute before asking whether its folder exists. The paths as given work."""
    monkeypatch.chdir(tmp_path)
    for _ in range(18):  # 18 x 251 bytes: past PATH_MAX, each name within NAME_MAX
        os.mkdir("d" * 250)
        os.chdir("d" * 250)
    assert len(os.getcwd()) > 4096
    Path("m.keras").write_bytes(b"x")
    c = build_config({"model_path": "m.keras", "report": "r.json", "markdown": "s.md"}, environ={})
    from prunecli.run.preflight import plan_prune

    output, planned = plan_prune(c)
    assert output == Path("m.pruned.keras") and planned.write("report") == Path("r.json")
    with atomic_path(output) as tmp:
        tmp.write_bytes(b"model")
    assert sorted(os.listdir(".")) == ["m.keras", "m.pruned.keras"]


def test_outputs_together_leave_none_of_the_files_after_an_interrupt(tmp_path):
    """Files written together (sweep's four, a run's outputs): an interrupt before the block ends
    leaves none of them, and no temporary file; a block that ends renames them all."""
    from prunecli.io.models import atomic_path, outputs_together

    targets = [tmp_path / f"sweep.{kind}" for kind in ("json", "csv", "png", "md")]
    with pytest.raises(KeyboardInterrupt):
        with outputs_together():
            for t in targets[:2]:
                with atomic_path(t) as tmp:
                    tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with outputs_together():
        for t in targets:
            with atomic_path(t) as tmp:
                tmp.write_text(t.suffix)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)


def test_an_output_written_by_someone_else_during_the_run_is_not_replaced(tmp_path, capsys):
    """Two runs with the same -o (or the same default name, both planned while it did not exist): each
    report named the sha256 and sparsity of its own model, and the file held the other's. An output
    that changed since the plan stops the commit: nothing of this run is written (exit 5), and a report
    to standard output (`-r -`, a FIFO, a device), which named the model the commit then refused, is
    printed only once the outputs are in place."""
    from prunecli.io.models import atomic_path, outputs_together
    from prunecli.run.preflight import plan_prune

    (tmp_path / "m.keras").write_bytes(b"x")
    config = build_config({"model_path": str(tmp_path / "m.keras"), "report": str(tmp_path / "r.json")}, environ={})
    out, _ = plan_prune(config)  # the default name: free when planned
    out.write_text("the other run's model")
    with pytest.raises(OutputError, match=r"m\.pruned\.keras changed while this run worked"):
        with outputs_together():
            for target in (out, tmp_path / "r.json"):
                with atomic_path(target) as tmp:
                    tmp.write_text("this run's")
            paths.write_text("-", "this run's report")
    assert out.read_text() == "the other run's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.pruned.keras"], "nothing half written"
    assert capsys.readouterr().out == "", "no report of a model that was not written"
    out.unlink()
    plan_prune(config)
    with outputs_together():  # unchanged since its plan: written
        with atomic_path(out) as tmp:
            tmp.write_text("this run's")
        paths.write_text("-", "this run's report")
        assert capsys.readouterr().out == "", "printed after the renames"
    assert out.read_text() == "this run's" and capsys.readouterr().out == "this run's report\n"


@pytest.mark.parametrize("existed", [False, True], ids=["absent", "existing"])
@pytest.mark.parametrize("os_offers", ["exchange", "no-replace rename", "hard link", "neither"])
def test_an_output_written_right_after_the_last_check_is_not_replaced(tmp_path, monkeypatch, existed, os_offers):
    """The window between the check that an output is as planned and the rename onto it: a rival
    writer landing there (measured with a racing thread: 8 of 2000 commits onto a free name and 38 of
    2000 onto an existing one replaced the rival's file without a word) now meets an exchange checked
    after the swap, a no-replace rename or the set-aside's own check, so the run refuses (exit 5) and
    the rival's file stays; where the OS has no two-name rename, a hard link does it, and where it has
    neither, a last check."""
    from prunecli.io.models import outputs_together, write

    offered = {"exchange": ("exchange", "noreplace"), "no-replace rename": ("noreplace",)}.get(os_offers, ())
    if "exchange" in offered and write._rename_call("exchange") is None:
        pytest.skip("this platform has no exchanging rename")
    real = write._rename_call
    monkeypatch.setattr(write, "_rename_call", lambda kind: real(kind) if kind in offered else None)
    if os_offers == "neither":
        monkeypatch.setattr(write.os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "no")))
    out = tmp_path / "o.keras"
    if existed:
        out.write_text("before the run")
    checked = write._check_unchanged

    def rival_lands_after_the_check(targets):
        checked(targets)
        (tmp_path / "rival").write_text("the rival's model")
        os.replace(tmp_path / "rival", out)

    monkeypatch.setattr(write, "_check_unchanged", rival_lands_after_the_check)
    write.expect_unchanged([out])
    with pytest.raises(OutputError, match=r"o\.keras changed while this run worked"):
        with outputs_together():
            for target in (out, tmp_path / "r.json"):
                with atomic_path(target) as tmp:
                    tmp.write_text("this run's")
    assert out.read_text() == "the rival's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.keras"], "nothing of this run, no temporary file"
    monkeypatch.setattr(write, "_check_unchanged", checked)
    write.expect_unchanged([out])  # planned anew, nothing racing: replaced, through the same path
    with atomic_path(out) as tmp:
        tmp.write_text("this run's")
    assert out.read_text() == "this run's" and sorted(p.name for p in tmp_path.iterdir()) == ["o.keras"]


def test_a_replaced_output_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    """A private (0600) model or report, replaced by a run, became 0644: readable by anyone."""
    from prunecli.io.models import outputs_together

    private, shared, new = tmp_path / "o.keras", tmp_path / "r.json", tmp_path / "new.json"
    for path, mode in ((private, 0o600), (shared, 0o640)):
        path.write_text("old")
        path.chmod(mode)
    with outputs_together():
        for target in (private, shared, new):
            with atomic_path(target) as tmp:
                tmp.write_text("new")
    modes = [path.stat().st_mode & 0o777 for path in (private, shared, new)]
    assert modes[:2] == [0o600, 0o640] and private.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert modes[2] == 0o666 & ~umask  # a new name: a plain new file's mode, as before


def test_replacing_an_output_swaps_it_in_one_step_where_the_os_can(tmp_path, monkeypatch):
    """With an exchanging rename (renameat2 on Linux, renamex_np on macOS) the old output is never moved
    away first: a run killed between that move and the rename left nothing at -o, the old file under a
    temporary name that the next run's cleanup removes. A later output's failure swaps it back too."""
    from prunecli.io.models import outputs_together, write

    swap, probe = write._rename_call("exchange"), [tmp_path / "a", tmp_path / "b"]
    for p in probe:
        p.write_text(p.name)
    if swap is None or swap(*probe):
        pytest.skip("no exchanging rename here")
    for p in probe:
        p.unlink()
    monkeypatch.setattr(write, "_set_aside", lambda target: pytest.fail(f"{target} was moved aside"))
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    out.write_text("old model")
    report.write_text("old report")
    with atomic_path(out) as tmp:
        tmp.write_text("new model")
    assert out.read_text() == "new model"
    place = write._place

    def report_fails(tmp, target):
        if target == report:
            raise PermissionError(1, "immutable")
        return place(tmp, target)

    monkeypatch.setattr(write, "_place", report_fails)
    with pytest.raises(OutputError):
        with outputs_together():
            for target in (out, report):
                with atomic_path(target) as tmp:
                    tmp.write_text("newer")
    assert (out.read_text(), report.read_text()) == ("new model", "old report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.keras", "r.json"], "no temporary file left"


def test_the_report_is_valid_json_with_null_for_nan():
    from prunecli.outputs.report import Report

    report = Report(settings={"lr": float("inf")}, input={}, metrics={"after": {"loss": float("nan")}})
    text = report.to_json()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["metrics"]["after"]["loss"] is None


def test_a_file_name_with_a_newline_or_backticks_stays_one_code_span_in_the_summary():
    """`m\\n| **Sparsity** | 99% |.keras` split the summary's title in two, and a backtick closed its code
    span, so the rest of the name rendered as Markdown: a bold claim the run never made."""
    from prunecli.outputs.report import Report, md_code, render_markdown

    name = "m\n| **99% sparse** |`x``.keras"
    assert md_code(name) == "``` m | **99% sparse** |`x``.keras ```"
    assert md_code("a|b", cell=True) == "`a\\|b`" and md_code("plain.keras") == "`plain.keras`"
    totals = {"prunable_sparsity": 0.5, "prunable_nonzeros": 1, "prunable_params": 2, "sparsity": 0.5}
    totals |= {"nonzeros": 1, "params": 2}
    report = Report(settings={}, input={"path": f"d/{name}", "bytes": 1}, output={"path": "o.keras", "bytes": 1})
    report.totals = totals
    md = render_markdown(report)
    assert md.splitlines()[0] == f"## prunecli: {md_code(name)} → `o.keras`"
    assert f"| input | {md_code('d/' + name, cell=True)} |" in md


def test_a_long_unbroken_name_or_markup_in_a_name_prints_as_text_in_bounded_lines():
    """A note quoting a 70,000-character layer name took rich 87 s to print (its highlighter is
    quadratic in an unbroken word), and `[/]` in a path stopped the summary with a MarkupError. The
    terminal shows such a word by its ends and length; the JSON report keeps it whole."""
    import io

    from rich.console import Console

    from prunecli.outputs.report import render

    name = "L" + "x" * 69_999
    report = _one_layer_report()
    report.input["path"] = "in/a[/]b [red]c.keras"
    report.layers[0].name = f"{name}/kernel"
    report.notes = [f"layer {name} kept dense"]
    console = Console(file=io.StringIO(), width=100)
    render(report, console)
    printed = console.file.getvalue().splitlines()
    assert max(len(line) for line in printed) <= 100
    note = "".join(printed[next(i for i, ln in enumerate(printed) if ln.startswith("note:")) :]).replace(" ", "")
    assert note == f"note:layer{name[:200]}…(70,000characters)…{name[-60:]}keptdense"  # folded at the width
    assert any("in/a[/]b [red]c.keras" in line for line in printed)
    report.input["path"] = "/" + "/".join(["ci-workspace-0123456789"] * 20) + "/in.keras"  # 481 characters
    console = Console(file=io.StringIO(), width=100)
    render(report, console)
    assert report.input["path"] in "".join(ln.strip(" │") for ln in console.file.getvalue().splitlines())
    assert json.loads(report.to_json())["notes"] == [f"layer {name} kept dense"]


def _savedmodel_plan(model: Path, out: Path, **cli):
    from prunecli.run.preflight import plan_prune

    config = build_config({"model_path": str(model), "output": str(out), "export": ["savedmodel"], **cli}, environ={})
    return plan_prune(config)


@pytest.mark.parametrize("data", ["recs/part-*.tfrecord", "recs/part-0.tfrecord", "recs"])
@pytest.mark.parametrize("target", ["recs/part-1.tfrecord", "recs/spec.yaml", "held.tfrecord"])
def test_a_write_onto_a_tfrecord_glob_match_its_spec_or_its_eval_records_is_refused(tmp_path, data, target):
    """`-d 'recs/*.tfrecord' --report recs/part-0.tfrecord` replaced a shard, and the spec's `eval:`
    records were never planned as reads."""
    (tmp_path / "recs").mkdir()
    for name in ("recs/part-0.tfrecord", "recs/part-1.tfrecord", "held.tfrecord", "in.keras"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "recs" / "spec.yaml").write_text("x: {key: x}\ny: {key: label}\neval: ../held.tfrecord\n")
    if data.endswith("part-0.tfrecord") and target.endswith("part-1.tfrecord"):
        target = "recs/part-0.tfrecord"
    from prunecli.run.preflight import plan_prune

    c = {"model_path": str(tmp_path / "in.keras"), "data": str(tmp_path / data), "report": str(tmp_path / target)}
    with pytest.raises(OutputError, match="would overwrite the data file|a folder the run reads"):
        plan_prune(build_config(c, environ={}))


def test_a_savedmodel_folder_holding_the_input_is_refused(tmp_path):
    """The export replaces its folder whole: the input model (or data) inside it would go with it."""
    folder = tmp_path / "out_savedmodel"
    (folder / "variables").mkdir(parents=True)  # inside a SavedModel's part: only the input check refuses it
    model = folder / "variables" / "in.keras"
    model.write_bytes(b"x")
    with pytest.raises(OutputError, match="out_savedmodel already exists"):
        _savedmodel_plan(model, tmp_path / "out.keras")
    with pytest.raises(OutputError, match="replaced whole, and the input is inside it"):
        _savedmodel_plan(model, tmp_path / "out.keras", force=True)  # --force never allows deleting a read file


@pytest.mark.parametrize("export", ["savedmodel", "tflite"])
def test_an_existing_export_name_is_replaced_only_with_force(tmp_path, export):
    """An export's name is made from the output's, never given: an earlier run's export, or the user's
    own folder or file of that name, was replaced whole without a word (the user's files inside a
    SavedModel folder included)."""
    model = tmp_path / "in.keras"
    model.write_bytes(b"x")
    target = paths.export_paths(tmp_path / "out.keras")[export]
    if export == "savedmodel":
        target.mkdir()
        (target / "precious.txt").write_text("the user's")
    else:
        target.write_text("the user's")
    with pytest.raises(OutputError, match=f"export {export} .*{target.name} already exists .*--force to replace it"):
        _savedmodel_plan(model, tmp_path / "out.keras", export=[export])
    if export == "savedmodel":  # --force replaces an earlier run's SavedModel, never the user's files in one
        with pytest.raises(OutputError, match=r"holds files a SavedModel does not \(precious.txt\).*even with --force"):
            _savedmodel_plan(model, tmp_path / "out.keras", export=[export], force=True)
        (target / "precious.txt").unlink()
        (target / "variables").mkdir()
        (target / "saved_model.pb").write_bytes(b"x")
    _savedmodel_plan(model, tmp_path / "out.keras", export=[export], force=True)
    assert target.exists(), "planning removes nothing"
    if export == "savedmodel":  # a file where the folder goes is never replaced, not even with --force
        (target / "saved_model.pb").unlink()
        (target / "variables").rmdir()
        target.rmdir()
        target.write_text("the user's")
        with pytest.raises(OutputError, match="exists and is not a folder"):
            _savedmodel_plan(model, tmp_path / "out.keras", force=True)


def test_the_python_api_plans_the_paths_the_cli_plans(tmp_path):
    """prune() refuses what the CLI refuses, before any work: a report onto the feature-names file, or
    settings out of range in a config changed after build_config."""
    from prunecli import prune

    model, names = tmp_path / "in.keras", tmp_path / "names.txt"
    model.write_bytes(b"x")
    names.write_text("a\nb\n")
    config = build_config(
        {"model_path": str(model), "granularity": "input", "feature_names": str(names), "report": str(names)},
        environ={},
    )
    with pytest.raises(OutputError, match="would overwrite the feature names file"):
        prune(config)
    assert names.read_text() == "a\nb\n"
    # a config changed after build_config is checked as the CLI checks it: sparsity 5 pruned a model
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), got 5.0"):
        prune(config.replace(sparsity=5.0, report=None))
    with pytest.raises(ConfigError, match="invalid PruneConfig"):
        prune(config.replace(sparsity="half", report=None))


def test_killed_runs_temporary_folders_are_removed(tmp_path, monkeypatch):
    """owned_tempdir's folder of a run that was killed (its process gone) is removed by the next run;
    a live process's folder, another name and another shape stay."""
    import subprocess
    import sys
    import tempfile

    from prunecli import runtime

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    orphan = tmp_path / f"prunecli-{dead_pid}-abcd_123"
    orphan.mkdir()
    (orphan / "staging.keras").write_bytes(b"\0" * 1024)
    alive = tmp_path / f"prunecli-{os.getppid()}-abcd_123"
    alive.mkdir()
    others = [tmp_path / "prunecli-quant-text", tmp_path / f"prunecli-{dead_pid}-short"]
    for other in others:
        other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with runtime.owned_tempdir():
        own = Path(tempfile.gettempdir())
        assert own.parent == tmp_path and own.name.startswith(f"prunecli-{os.getpid()}-")
    assert not orphan.exists() and not own.exists()
    assert alive.exists() and all(other.exists() for other in others)


def test_what_lives_as_long_as_the_process_is_made_outside_the_runs_folder(tmp_path, monkeypatch):
    """Imports run in the user's temporary folder (runtime.process_tempdir): matplotlib, which TensorFlow
    imports, makes a folder there when the home is read-only and removes it at exit; made in the run's
    folder, which the run removes first, every command ended in a 'FileNotFoundError' traceback (exit 0)."""
    import tempfile

    from prunecli import runtime

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with runtime.owned_tempdir():
        run_folder = tempfile.gettempdir()
        with runtime.process_tempdir():
            kept = Path(tempfile.mkdtemp(prefix="matplotlib-"))
            assert os.environ["TMPDIR"] == str(tmp_path)
        assert tempfile.gettempdir() == os.environ["TMPDIR"] == run_folder != str(tmp_path)
    assert kept.parent == tmp_path and kept.is_dir() and not Path(run_folder).exists()
    assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.tempdir is None
    with runtime.process_tempdir():  # outside a run: nothing to change
        assert os.environ["TMPDIR"] == str(tmp_path)


def test_a_report_to_dev_stdout_is_the_standard_output(files):
    """--report /dev/stdout wrote the JSON and then the tables into the same stream: it is `-` now, which
    keeps the tables off standard output (and two reports to it are refused)."""
    c = _config(files, report="/dev/stdout")
    assert c.report == "-"
    with pytest.raises(UsageError, match="would both write to stdout"):
        paths.plan(_config(files, report="/dev/stdout", markdown="-"), output_model=files / "o.keras")
    with pytest.raises(UsageError, match="--save-plan needs a file name"):  # not a file named "-"
        paths.plan(_config(files, save_plan="-"), output_model=files / "o.keras")


@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_standard_output_or_error_redirected_onto_an_output_is_refused(files, monkeypatch, quiet, stream):
    """`prunecli prune m.keras -r - --markdown r.md > r.md`: the in-place writes (standard output) went into
    the old r.md, which the commit swapped out and deleted, so the report was lost with exit 0; `2> r.md`
    lost the progress lines so. Refused before any work when the run prints anything there; with -q and
    no `-` output nothing is lost."""
    (files / "r.md").write_text("old summary")
    name = {"stdout": "standard output", "stderr": "standard error"}[stream]
    with open(files / "r.md", "a") as redirected:
        monkeypatch.setattr(f"sys.{stream}", redirected)
        c = _config(files, markdown=str(files / "r.md"), quiet=quiet)
        if quiet:
            paths.plan(c, output_model=files / "o.keras")
            if stream == "stderr":  # -q prints no progress: only an error, when nothing is replaced
                return
            c = _config(files, markdown=str(files / "r.md"), report="-", quiet=True)
        with pytest.raises(OutputError, match=rf"{name} is the markdown .*r\.md, which the run replaces"):
            paths.plan(c, output_model=files / "o.keras")
    assert (files / "r.md").read_text() == "old summary"


def test_a_report_inside_the_savedmodel_folder_the_export_replaces_is_refused_before_the_work(tmp_path):
    """The report's temporary file went into the old folder, which the export's rename then replaced:
    exit 5 only after the whole run, with a wrong reason ("No such file or directory")."""
    model = tmp_path / "in.keras"
    model.write_bytes(b"x")
    (tmp_path / "out_savedmodel").mkdir()  # replaced with --force
    for key in ("report", "markdown"):
        inside = str(tmp_path / "out_savedmodel" / "r.txt")
        with pytest.raises(
            OutputError, match=f"{key} .*r.txt is inside .*out_savedmodel, which the export savedmodel replaces whole"
        ):
            _savedmodel_plan(model, tmp_path / "out.keras", force=True, **{key: inside})
