"""Plan files (`prune --save-plan`), `prunecli apply` and `prunecli verify` (issue 29)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import build_mlp, make_tabular

from prunecli.errors import ConfigError, GateFailed, InputError
from prunecli.io import plan_file
from prunecli.io.data import files_loaded


def _weights(path) -> dict:
    import keras

    from prunecli.structure import targets

    model = keras.saving.load_model(path, compile=False)
    return {t.name: np.asarray(t.variable) for t in targets.walk(model)}


@pytest.fixture(scope="module")
def retrained(mlp_files, tmp_path_factory):
    """Another checkpoint of the MLP's architecture: other initial weights, other data."""
    d = tmp_path_factory.mktemp("retrained")
    x, y = make_tabular(seed=7)
    model = build_mlp(seed=3)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(d / "retrained.keras")
    return d / "retrained.keras"


@pytest.fixture(scope="module")
def pruned(mlp_files, tmp_path_factory):
    """One run with a plan and a report: (output, plan, report)."""
    from click.testing import CliRunner

    from prunecli.cli import main

    d = tmp_path_factory.mktemp("pruned")
    out, plan, report = d / "out.keras", d / "plan.zip", d / "report.json"
    args = ["prune", mlp_files["keras"], "-s", "0.6", "-o", out, "--save-plan", plan, "-r", report, "-q"]
    args += ["--data", mlp_files["data"]]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, plan, report


def test_plan_file_is_a_documented_zip_without_pickle(pruned, mlp_files):
    out, plan, report = pruned
    with zipfile.ZipFile(plan) as z:
        names = z.namelist()
        assert names[0] == "plan.json" and all(n.startswith("masks/") for n in names[1:])
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        manifest = json.loads(z.read("plan.json"))
    assert manifest["format"] == "prunecli-plan" and manifest["version"] == 1
    assert manifest["settings"]["sparsity"] == 0.6 and manifest["granularity"] == "element"
    assert [w[0] for w in manifest["architecture"]["weights"]][:2] == ["hidden1/kernel", "hidden1/bias"]
    assert len(manifest["weights_sha256"]) == 64
    r = json.loads(report.read_text())
    assert r["plan"]["sha256"] == plan_file.read(plan).sha256
    assert r["output"]["sha256"] == plan_file.file_sha256(out)
    # the default magnitude command with --data chooses its allocation on the data: not promised bit for bit
    assert r["reproducibility"]["masks"] == "expected, not guaranteed"
    assert any("allocation is chosen" in why for why in r["reproducibility"]["why"])
    from prunecli import build_config

    no_data = build_config({"model_path": str(out), "sparsity": 0.6}, environ={})
    assert plan_file.reproducibility(no_data)["masks"] == plan_file.reproducibility(no_data)["weights"] == "bitwise"
    channels = {"model_path": str(out), "granularity": "neuron", "data": str(mlp_files["data"])}
    channels = build_config(channels, environ={})
    assert plan_file.reproducibility(channels)["weights"] == "expected, not guaranteed"
    # the plan's masks are the output's zeros
    saved = plan_file.read(plan)
    weights = _weights(out)
    for t in saved.targets:
        assert np.array_equal(saved.mask(t["name"]), weights[t["name"]] != 0)


def test_same_command_gives_the_same_plan_bytes(mlp_files, tmp_path, cli, pruned):
    plan = tmp_path / "plan.zip"
    args = ["prune", mlp_files["keras"], "-s", "0.6", "-o", tmp_path / "o.keras", "--save-plan", plan, "-q"]
    args += ["--data", mlp_files["data"]]
    assert cli(*args).exit_code == 0
    first = plan.read_bytes()
    assert cli(*args).exit_code == 0
    assert plan.read_bytes() == first
    # the masks are those of the earlier run with other output paths
    assert plan_file.read(plan).packed == plan_file.read(pruned[1]).packed


def test_apply_to_the_same_model_gives_identical_masks(mlp_files, pruned, tmp_path):
    from prunecli.run.apply import apply_plan

    out, plan, _ = pruned
    result = apply_plan(plan, mlp_files["keras"], output=str(tmp_path / "again.keras"), quiet=True)
    a, b = _weights(out), _weights(tmp_path / "again.keras")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name] != 0, b[name] != 0)
        assert np.array_equal(a[name], b[name])  # the same weights too: nothing was fine-tuned
    assert result.report.to_dict()["plan"]["same_weights"] is True


def test_apply_to_a_retrained_checkpoint_gives_the_plans_masks(pruned, retrained, tmp_path, cli):
    out, plan, _ = pruned
    target = tmp_path / "retrained.pruned.keras"
    report = tmp_path / "r.json"
    result = cli("apply", plan, retrained, "-o", target, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    saved = plan_file.read(plan)
    original, applied = _weights(retrained), _weights(target)
    for t in saved.targets:
        keep = saved.mask(t["name"])
        assert np.array_equal(applied[t["name"]] != 0, keep & (original[t["name"]] != 0))
        assert np.array_equal(applied[t["name"]][keep], original[t["name"]][keep])  # the kept weights untouched
    r = json.loads(report.read_text())
    assert r["plan"]["same_weights"] is False and any("differ from those the plan" in n for n in r["notes"])
    assert cli("verify", target, "-r", report, "--plan", plan).exit_code == 0


@pytest.mark.slow
def test_apply_then_fine_tune_holds_the_plans_masks(mlp_files, pruned, retrained, tmp_path):
    from prunecli.run.apply import apply_plan

    _, plan, _ = pruned
    target = tmp_path / "ft.keras"
    apply_plan(plan, retrained, output=str(target), data=str(mlp_files["data"]), epochs=1, quiet=True)
    saved = plan_file.read(plan)
    applied = _weights(target)
    for t in saved.targets:
        assert not applied[t["name"]][~saved.mask(t["name"])].any()


def test_a_different_architecture_is_refused_naming_the_first_mismatch(pruned, tmp_path, cli):
    import keras

    _, plan, _ = pruned
    inp = keras.Input((20,), name="features")
    x = keras.layers.Dense(32, activation="relu", name="hidden1")(inp)
    x = keras.layers.Dense(24, activation="relu", name="hidden2")(x)  # 24 units, not 16
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x), name="mlp")
    other = tmp_path / "other.keras"
    model.save(other)
    result = cli("apply", plan, other, "-o", tmp_path / "x.keras", "-q")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit" in lines[0] and "'hidden2/kernel' (20, 24)" not in lines[0]
    assert "hidden2/kernel" in lines[0] and "(32, 16)" in lines[0] and "(32, 24)" in lines[0]
    assert not (tmp_path / "x.keras").exists()


def test_a_layer_computing_otherwise_with_the_same_names_and_shapes_is_refused(pruned, tmp_path, cli):
    """The fingerprint's names, classes and shapes are the same with tanh for ReLU: the layer settings are not."""
    import keras

    out, plan, _ = pruned
    model = keras.saving.load_model(out, compile=False)
    config = model.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] == "hidden2":
            layer["config"]["activation"] = "tanh"
    tanh = keras.Model.from_config(config)
    tanh.set_weights(model.get_weights())
    other = tmp_path / "tanh.keras"
    tanh.save(other)
    result = cli("apply", plan, other, "-o", tmp_path / "x.keras", "-q")
    assert result.exit_code == 3 and not (tmp_path / "x.keras").exists()
    line = result.stderr.strip()
    assert "'hidden2'" in line and 'activation="relu"' in line and 'activation="tanh"' in line, line
    result = cli("verify", other, "--plan", plan)
    assert result.exit_code == 4 and 'activation="tanh"' in result.stderr
    assert cli("verify", out, "--plan", plan).exit_code == 0


def test_verify_passes_on_the_runs_own_output_and_refuses_other_data(pruned, mlp_files, cli, tmp_path):
    """The report records a digest of its --data (reproducibility.data): a copy of that data under another
    name is the same data, other data is refused (exit 3): the report's accuracy was measured on its own,
    and a verify gate re-measuring on other data could pass by chance."""
    import shutil

    from prunecli.run.verify import verify

    out, plan, report = pruned
    result = cli("verify", out, "-r", report, "--plan", plan, "--data", mlp_files["data"])
    assert result.exit_code == 0, result.output
    assert "claims hold" in result.stdout
    copy = shutil.copy(mlp_files["data"], tmp_path / "same_examples.npz")
    checked = verify(out, report=report, plan=plan, data=copy)
    assert any(c.startswith("accuracy") for c in checked.checked) and any("sha256" in c for c in checked.checked)
    assert any(c.startswith("loss") for c in checked.checked)  # the loss is a claim too, measured again
    claims = json.loads(Path(report).read_text())
    for values in claims["metrics"].values():
        values["loss"] *= 0.5  # a report edited to a better loss: it verified while only accuracy was checked
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(claims))
    lying = verify(out, report=edited, data=copy, raise_on_failure=False)
    assert [f for f in lying.failures if f.startswith("loss:")] and not any("accuracy" in f for f in lying.failures)
    x, y = make_tabular(seed=7)
    np.savez(tmp_path / "other.npz", x=x, y=y)
    result = cli("verify", out, "-r", report, "--data", tmp_path / "other.npz")
    assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1
    assert "other.npz is not the data the report's run evaluated (" in result.stderr
    result = cli("verify", out, "-r", report, "--data", tmp_path / "none-*.tfrecord")
    assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1
    assert "none-*.tfrecord: the pattern matches no file" in result.stderr


def test_the_data_digest_covers_what_the_loader_reads_and_no_hidden_file(tmp_path):
    """A copy of a data folder with the hidden files a copy leaves (`.DS_Store`, `._x`, a hidden
    `.ipynb_checkpoints` folder beside train/ and test/) is the same data: the digest covers the files
    the loader reads (io.data.files_loaded), and a hidden folder no longer makes train/ and test/ two
    classes. The loader reads that listing: a macOS `._0.png` in a class folder was listed by Keras and
    refused as no image (exit 3), and a zip's `__MACOSX/` became a class. An image moved to another
    class folder is other data; a folder with no image is refused."""
    import shutil

    import keras
    import tensorflow as tf

    from prunecli.errors import DataError
    from prunecli.io import data

    images = tmp_path / "images"
    for split, label, n in (("train", "cat", 2), ("train", "dog", 2), ("test", "cat", 1), ("test", "dog", 1)):
        (images / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = tf.fill((2, 2, 1), tf.constant(i * 40 + len(label), tf.uint8))
            (images / split / label / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    records = tmp_path / "records"
    records.mkdir()
    (records / "part-0.tfrecord").write_bytes(b"records")
    (records / "spec.yaml").write_text("x: {key: x}\ny: {key: label}\n")
    for folder in (images, records):
        copy = Path(shutil.copytree(folder, tmp_path / "copy" / folder.name))
        for junk in (".DS_Store", "._x", "._part-0.tfrecord", "notes.txt", "train/.DS_Store"):
            (copy / junk).parent.mkdir(exist_ok=True)
            (copy / junk).write_bytes(b"\0\x05\x16\x07 junk")
        (copy / ".ipynb_checkpoints").mkdir()
        (copy / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        for junk in ("__MACOSX/train/cat/._0.png", "train/cat/._0.png", "train/dog/Thumbs.db", "train/desktop.ini"):
            (copy / junk).parent.mkdir(parents=True, exist_ok=True)
            (copy / junk).write_bytes(b"\0\x05\x16\x07 junk")
        assert plan_file.data_digest(str(copy)) == plan_file.data_digest(str(folder))
    assert [name for name, _f in files_loaded(str(images))][:2] == ["test/cat/0.png", "test/dog/0.png"]
    inputs = keras.Input((2, 2, 1))
    two_classes = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    loaded = data.load(str(tmp_path / "copy" / "images"), two_classes, batch_size=4)  # train/ and test/, 2 classes
    assert (loaded.n_train, loaded.n_eval, loaded.eval_classes) == (4, 2, 2)
    assert sorted(np.asarray(loaded.y_example).tolist()) == [0, 1]
    assert [name for name, _f in files_loaded(str(records))] == ["part-0.tfrecord", "spec.yaml"]
    (images / "train/cat/1.png").rename(images / "train/dog/1b.png")
    assert plan_file.data_digest(str(images)) != plan_file.data_digest(str(tmp_path / "copy" / "images"))
    shutil.rmtree(images / "train")
    shutil.rmtree(images / "test")
    with pytest.raises(DataError, match="images: no images to read"):
        plan_file.data_digest(str(images))


def test_verify_of_a_missing_model_or_a_folder_is_one_line_with_the_report_too(pruned, tmp_path, cli):
    """With --report the report's digest read the model file first: FileNotFoundError, exit 1."""
    from prunecli.errors import ModelLoadError
    from prunecli.run.verify import verify

    _out, _plan, report = pruned
    for model, said in ((tmp_path / "gone.keras", "model file not found"), (tmp_path, "is a directory")):
        result = cli("verify", model, "-r", report)
        assert result.exit_code == 3 and said in result.stderr and len(result.stderr.strip().splitlines()) == 1
        with pytest.raises(ModelLoadError, match=said):
            verify(model, report=report)


def test_verify_fails_on_weights_altered_after_the_run(pruned, tmp_path, cli):
    import keras

    out, plan, report = pruned
    model = keras.saving.load_model(out, compile=False)
    kernel = model.get_layer("hidden1").kernel
    value = np.asarray(kernel).copy()
    value[value == 0] = 0.5  # pruned weights brought back
    kernel.assign(value)
    altered = tmp_path / "altered.keras"
    model.save(altered)
    result = cli("verify", altered, "-r", report, "--plan", plan)
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("prunecli: error: output sha256")
    assert any("hidden1/kernel" in line and "non-zeros" in line for line in lines)
    assert any("weight(s) the plan prunes are non-zero" in line for line in lines)
    with pytest.raises(GateFailed) as caught:
        from prunecli.run.verify import verify

        verify(altered, report=report)
    assert caught.value.exit_code == 4 and len(caught.value.failures) > 1


def test_verify_fails_on_an_edited_report(pruned, tmp_path, cli):
    out, plan, report = pruned
    r = json.loads(report.read_text())
    r["layers"][0]["sparsity"] = 0.9
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(r))
    result = cli("verify", out, "-r", edited)
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hidden1/kernel: sparsity" in lines[0] and "report says 0.9" in lines[0]


def test_verify_fails_on_a_broken_2_4_group(mlp_files, tmp_path, cli):
    import keras

    out, report = tmp_path / "nm.keras", tmp_path / "nm.json"
    args = ["prune", mlp_files["keras"], "-g", "n:m=2:4", "-o", out, "-r", report, "-q"]
    assert cli(*args).exit_code == 0
    assert cli("verify", out, "-r", report).exit_code == 0
    model = keras.saving.load_model(out, compile=False)
    kernel = model.get_layer("hidden2").kernel
    value = np.asarray(kernel).copy()
    row = int(np.flatnonzero(value[:4, 5] == 0)[0])
    value[row, 5] = 1.0  # group rows 0..3 of unit 5 now holds 3 non-zeros
    kernel.assign(value)
    broken = tmp_path / "broken.keras"
    model.save(broken)
    result = cli("verify", broken, "-r", report)
    assert result.exit_code == 4
    assert "hidden2/kernel: 2:4 broken in 1 group(s) (first: unit 5, rows 0..3 hold 3 non-zeros)" in result.stderr


def test_structural_plans_are_refused_by_apply(mlp_files, tmp_path, cli):
    plan = tmp_path / "layer.zip"
    args = ["prune", mlp_files["keras"], "-g", "input", "--keep-features", "10", "-o", tmp_path / "i.keras"]
    assert cli(*args, "--save-plan", plan, "-q").exit_code == 0
    result = cli("apply", plan, mlp_files["keras"], "-o", tmp_path / "a.keras")
    assert result.exit_code == 2 and "removes structure (-g input)" in result.stderr


def test_neuron_plan_applies_to_a_retrained_checkpoint(mlp_files, retrained, tmp_path, cli):
    from prunecli import build_config, prune
    from prunecli.run.apply import apply_plan

    plan = tmp_path / "neuron.zip"
    settings = {"model_path": str(mlp_files["keras"]), "granularity": "neuron", "sparsity": 0.5, "quiet": True}
    prune(build_config({**settings, "output": str(tmp_path / "n.keras"), "save_plan": str(plan)}))
    saved = plan_file.read(plan)
    assert saved.targets and all(t["removed_units"] for t in saved.targets)
    result = apply_plan(plan, retrained, output=str(tmp_path / "rn.keras"), quiet=True)
    applied = _weights(tmp_path / "rn.keras")
    for t in saved.targets:
        assert np.array_equal(np.asarray(result.masks.masks[t["name"]]), saved.mask(t["name"]))
        assert not applied[t["name"]][..., t["removed_units"]].any()
    report = tmp_path / "s.json"
    shrunk = tmp_path / "shrunk.keras"
    result = cli("apply", plan, retrained, "-o", shrunk, "--shrink", "-r", report, "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["shrink"]
    assert cli("verify", shrunk, "-r", report, "--plan", plan).exit_code == 0


def test_plan_paths_are_planned_before_any_work(mlp_files, tmp_path, cli):
    import shutil

    model, data = tmp_path / "m.keras", tmp_path / "d.npz"
    shutil.copy(mlp_files["keras"], model)
    shutil.copy(mlp_files["data"], data)
    before = data.read_bytes()
    result = cli("prune", model, "-o", tmp_path / "o.keras", "--data", data, "--save-plan", data)
    assert result.exit_code == 5 and "plan" in result.stderr and "data file" in result.stderr
    assert data.read_bytes() == before
    result = cli("prune", model, "-o", tmp_path / "o.keras", "--save-plan", model)
    assert result.exit_code == 5 and "would overwrite the input" in result.stderr
    result = cli("prune", mlp_files["keras"], "-o", tmp_path / "o.keras", "--save-plan", tmp_path / "o.keras")
    assert result.exit_code == 5 and not (tmp_path / "o.keras").exists()


def test_bad_plan_files_are_input_errors(tmp_path, mlp_files):
    from prunecli.run.apply import apply_plan
    from prunecli.run.verify import verify

    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a prunecli plan file"):
        apply_plan(bogus, mlp_files["keras"], output=str(tmp_path / "x.keras"))
    with pytest.raises(ConfigError):
        verify(mlp_files["keras"])


def test_an_input_layer_named_by_keras_does_not_make_another_architecture(pruned, tmp_path, cli):
    """A retraining script's checkpoint of the same architecture whose InputLayer Keras named
    `input_layer_7` (another model built first in its process) takes the plan; a layer renamed is
    still refused."""
    import keras

    _, plan, _ = pruned

    def mlp(input_name, hidden="hidden1"):
        inp = keras.Input((20,), name=input_name)
        x = keras.layers.Dense(32, activation="relu", name=hidden)(inp)
        x = keras.layers.Dense(16, activation="relu", name="hidden2")(x)
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x), name="mlp")

    mlp("input_layer_7").save(tmp_path / "renamed_input.keras")
    result = cli("apply", plan, tmp_path / "renamed_input.keras", "-o", tmp_path / "a.keras", "-q")
    assert result.exit_code == 0, result.output
    mlp("features", hidden="first").save(tmp_path / "renamed_layer.keras")
    result = cli("apply", plan, tmp_path / "renamed_layer.keras", "-o", tmp_path / "b.keras", "-q")
    assert result.exit_code == 3 and "'first'" in result.stderr


@pytest.mark.parametrize("edit", ["duplicate", "kept", "unit_axis"])
def test_a_plan_edited_by_hand_is_refused(pruned, tmp_path, edit):
    """A plan whose manifest no longer describes its masks (a target listed twice, a `kept` count that
    is not the mask's, a unit axis the tensor does not have) is an InputError naming the target, not
    a run that applies it and reports figures the plan does not hold."""
    import json

    from prunecli.errors import InputError
    from prunecli.io import plan_file

    _, plan, _ = pruned
    with zipfile.ZipFile(plan) as z:
        files = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(files[plan_file.MANIFEST])
    targets = manifest["targets"]
    if edit == "duplicate":
        targets[1] = dict(targets[0])
    elif edit == "kept":
        targets[0]["kept"] = int(targets[0]["kept"]) + 1
    else:
        targets[0]["unit_axis"] = len(targets[0]["shape"]) + 3
    files[plan_file.MANIFEST] = json.dumps(manifest).encode()
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(edited, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(InputError, match=repr(targets[0]["name"]).strip("'")):
        plan_file.read(edited)
    assert plan_file.read(plan).targets  # the plan as written still reads


def test_verify_reads_the_digest_in_any_case_and_checks_the_size(pruned, tmp_path, cli):
    """A sha256 copied in capitals is the same digest; a report whose byte count is not the file's fails."""
    out, _plan, report = pruned
    r = json.loads(report.read_text())
    r["output"]["sha256"] = r["output"]["sha256"].upper()
    upper = tmp_path / "upper.json"
    upper.write_text(json.dumps(r))
    result = cli("verify", out, "-r", upper)
    assert result.exit_code == 0, result.output
    r["output"]["bytes"] += 1
    sized = tmp_path / "sized.json"
    sized.write_text(json.dumps(r))
    result = cli("verify", out, "-r", sized)
    assert result.exit_code == 4 and "output size: the report says" in result.stderr


def test_verify_checks_each_export_beside_the_model_or_says_it_did_not(pruned, tmp_path, cli):
    """A report's exports (a .tflite file, a SavedModel folder) are checked by their sha256 beside the
    model: one byte changed or the folder gone fails naming it (GateFailed, exit 4); an older prunecli's report,
    without the digest, has the export run against the model instead, and one that cannot be (an int8
    file, one that does not run) fails as not checked (exit 4: it exited 0, a green CI step on nothing)."""
    import hashlib
    import shutil

    from prunecli.run.verify import verify

    out, _plan, report = pruned
    model = Path(shutil.copy(out, tmp_path / "out.keras"))  # moved with its exports: checked where they are now
    tflite = tmp_path / "out.tflite"
    tflite.write_bytes(b"TFL3" + bytes(range(200)))
    saved = tmp_path / "out_savedmodel"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.index").write_bytes(b"index")
    folder_digest = plan_file.path_sha256(saved)
    os.utime(saved / "saved_model.pb", (1, 1))
    assert plan_file.path_sha256(shutil.copytree(saved, tmp_path / "copy")) == folder_digest  # time stamps, place
    (saved / "variables" / "variables.index").rename(saved / "variables" / "moved.index")
    assert plan_file.path_sha256(saved) != folder_digest, "a file renamed inside the folder kept its digest"
    r = json.loads(report.read_text())
    int8 = {"path": "/elsewhere/out.int8.tflite"}  # no sha256: as an older prunecli wrote it
    r["export"] = {
        "tflite": {"path": "/elsewhere/out.tflite", "sha256": hashlib.sha256(tflite.read_bytes()).hexdigest().upper()},
        "tflite-int8": int8,
        "savedmodel": {"path": "/elsewhere/out_savedmodel", "sha256": plan_file.path_sha256(saved)},
    }
    with_exports = tmp_path / "exports.json"
    with_exports.write_text(json.dumps(r))
    missing = cli("verify", model, "-r", with_exports)  # an older report's export, not there: exited 0 before
    assert missing.exit_code == 4 and missing.stdout == "", missing.output
    said = missing.stderr.strip().splitlines()
    assert len(said) == 1 and "out.int8.tflite is missing" in said[0], said
    (tmp_path / "out.int8.tflite").write_bytes(b"TFL3" + bytes(200))
    del r["export"]["tflite"]["sha256"]  # a float file without its digest is run instead: this one does not run
    with_exports.write_text(json.dumps(r))
    with pytest.raises(GateFailed) as unchecked:  # each said, in GateFailed's failures too
        verify(model, report=with_exports)
    first, second = unchecked.value.failures
    assert "out.tflite: not checked (the report records no sha256" in first and "does not run here" in first
    assert "out.int8.tflite: not checked" in second and "an int8 file's outputs" in second
    (tmp_path / "out.int8.tflite").unlink()
    r["export"]["tflite-int8"]["written"] = False  # the run's gate failed: none there holds
    r["export"]["tflite"]["sha256"] = hashlib.sha256(tflite.read_bytes()).hexdigest()
    with_exports.write_text(json.dumps(r))
    held = cli("verify", model, "-r", with_exports)
    assert held.exit_code == 0 and held.stderr == "" and "claims hold" in held.stdout, held.output

    tflite.write_bytes(b"TFL3" + bytes(range(199)) + b"\xff")  # one byte changed
    shutil.rmtree(saved)
    (tmp_path / "out.int8.tflite").write_bytes(b"TFL3")  # not the run's: it wrote none
    changed = verify(model, report=with_exports, raise_on_failure=False)
    assert len(changed.failures) == 3 and not changed.unchecked, changed.failures
    assert "export tflite sha256" in changed.failures[0] and "out.tflite" in changed.failures[0]
    assert "out.int8.tflite is there, but the report's run did not write it" in changed.failures[1]
    assert "out_savedmodel" in changed.failures[2] and "is missing" in changed.failures[2]
    assert not [c for c in changed.checked if c.startswith("export")], "a changed export counted as held"


@pytest.mark.parametrize("granularity", ["neuron", "n:m=2:4", "block:2x2", "neuron (manifest only)"])
def test_a_plan_whose_granularity_was_edited_is_refused(pruned, mlp_files, tmp_path, cli, granularity):
    """An element plan relabelled neuron, 2:4 or block:2x2 would be applied without bias folding, or
    reported and exported as a pattern it does not hold: its masks are checked against the granularity
    (exit 3, nothing written); a granularity edited in one of its two places is refused when the plan
    is read. A block plan's masks went unchecked: applied, reported as block:2x2 and verified."""
    _, plan, _ = pruned

    def edit(manifest):
        manifest["granularity"] = granularity.split(" ")[0]
        if "manifest only" not in granularity:
            manifest["settings"]["granularity"] = granularity

    edited = _edited_plan(plan, tmp_path, edit, sealed=False)  # a plan from before plans were sealed
    result = cli("apply", edited, mlp_files["keras"], "-o", tmp_path / "a.keras", "-q")
    assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.output
    expected = "is not its run's" if "manifest only" in granularity else f"is not {granularity} ("
    assert expected in result.stderr
    assert not (tmp_path / "a.keras").exists()


def test_apply_plan_without_a_plan_path_raises_the_packages_error(mlp_files):
    """The Python API's apply_plan(None, model) raised a TypeError from pathlib."""
    from prunecli.errors import InputError
    from prunecli.run.apply import apply_plan

    with pytest.raises(InputError, match="a plan file path is needed, got NoneType"):
        apply_plan(None, mlp_files["keras"])


@pytest.mark.parametrize(
    "option", [{"quantize": "int8"}, {"max_accuracy_drop": 0.0}, {"sparsity": 0.95}, {"save_plan": "again.zip"}]
)
def test_apply_plan_refuses_options_the_apply_command_does_not_have(pruned, mlp_files, tmp_path, option):
    """apply_plan(..., quantize="int8") ran without quantising, wrote a float model, and the report's
    settings said int8; a gate (max_accuracy_drop) was never checked, and a sparsity or save_plan was
    dropped without a word. Options the apply command does not have are refused, naming the option."""
    from prunecli.run.apply import apply_plan

    out = tmp_path / "out.keras"
    with pytest.raises(ConfigError, match=f"apply takes no option '{next(iter(option))}'"):
        apply_plan(pruned[1], mlp_files["keras"], output=str(out), data=str(mlp_files["data"]), **option)
    assert not out.exists()


def test_the_api_refuses_model_objects_dicts_and_odd_types_in_one_line(pruned, mlp_files):
    import keras

    import prunecli
    from prunecli import build_config
    from prunecli.io import models as model_io
    from prunecli.run.apply import apply_plan
    from prunecli.run.verify import verify

    model = keras.saving.load_model(mlp_files["keras"])
    with pytest.raises(ConfigError, match="^model_path takes the path of a saved model, not a model object: save it"):
        apply_plan(pruned[1], model)  # named as the plan's settings before ('plan p.zip: its settings: ...')
    with pytest.raises(ConfigError, match="verify: report takes the path of a file, not a dict"):
        verify(pruned[0], report={"layers": []})
    with pytest.raises(ConfigError, match="--tolerance must be a number, got '0.1'"):
        verify(pruned[0], report=pruned[2], tolerance="0.1")
    with pytest.raises(ConfigError, match="verify needs the model to check"):  # a TypeError before
        verify(None, report=pruned[2])
    with pytest.raises(ConfigError, match="^progress takes a function of one message, or None: got 5$"):
        apply_plan(pruned[1], mlp_files["keras"], progress=5)  # a TypeError in its first step before
    with pytest.raises(ConfigError, match="^progress takes a function of one message"):
        prunecli.prune(build_config({"model_path": str(mlp_files["keras"])}), progress="quiet")
    with pytest.raises(ConfigError, match="verify: unsafe takes True or False, got 'false'"):  # was truthy:
        verify(pruned[0], report=pruned[2], unsafe="false")  # a Lambda file's code ran
    with pytest.raises(ConfigError, match="^unsafe takes True or False, got 'no'"):  # every loader
        model_io.load(pruned[0], unsafe="no")
    x = np.zeros((4, 3))
    with pytest.raises(ConfigError, match=r"invalid value for data: a tuple \(a path is needed") as caught:
        build_config({"model_path": str(mlp_files["keras"]), "data": (x, x)})
    assert "\n" not in str(caught.value)


def test_an_edited_setting_of_the_plan_is_named_as_the_plans(pruned, mlp_files, tmp_path, cli):
    """A plan whose batch size was edited to 0 failed with "batch_size must be >= 1", which named no
    plan: the user had given no batch size."""
    _, plan, _ = pruned
    edit = lambda manifest: manifest["settings"].update(batch_size=0)  # noqa: E731
    edited = _edited_plan(plan, tmp_path, edit, sealed=False)
    result = cli("apply", edited, mlp_files["keras"], "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 2 and "edited.zip: its settings:" in result.stderr and "batch" in result.stderr
    result = cli("apply", _edited_plan(plan, tmp_path, edit), mlp_files["keras"], "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 3 and "edited.zip was edited after prunecli wrote it" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "o.keras").exists()


def _edited_plan(plan, tmp_path, edit, sealed=True):
    """A copy of the plan file whose manifest `edit(manifest)` changed in place (a hand-edited plan);
    `sealed=False`: without its seal, as a prunecli from before plans were sealed wrote it."""
    with zipfile.ZipFile(plan) as z:
        files = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(files[plan_file.MANIFEST])
    edit(manifest)
    if not sealed:
        del manifest[plan_file.SEAL]
    files[plan_file.MANIFEST] = json.dumps(manifest).encode()
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(edited, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return edited


def test_verify_says_an_element_plans_shrunk_kernels_are_not_checked(pruned):
    """An element plan applied with `apply --shrink` (the shrink also drops a filter no reader reads, which
    no plan records) failed verify as a model of another shape ('shape (3, 3, 16, 30), the plan (3, 3, 16,
    32)'): said now as not checked, naming what --shrink left; a larger side is still another model."""
    from types import SimpleNamespace

    from prunecli.run.verify import VerifyResult, _check_plan

    plan = plan_file.read(pruned[1])
    found = {}
    for t in plan.targets:
        shape = list(t["shape"])
        shape[t["unit_axis"]] -= 1
        found[t["name"]] = SimpleNamespace(shape=tuple(shape), units=shape[t["unit_axis"]])
    result = VerifyResult(model="shrunk.keras")
    _check_plan(result, plan, None, found, shrunk=True)
    assert not result.failures and len(result.unchecked) == len(plan.targets)
    assert (
        "not checked (--shrink left" in result.unchecked[0]
        and "element plan records no removed units" in result.unchecked[0]
    )
    first = plan.targets[0]
    found[first["name"]] = SimpleNamespace(shape=tuple(d + 1 for d in first["shape"]), units=0)
    result = VerifyResult(model="other.keras")
    _check_plan(result, plan, None, found, shrunk=True)
    assert len(result.failures) == 1 and "the plan (" in result.failures[0]


@pytest.mark.slow  # one --shrink run, two verifies
def test_a_shrunk_runs_own_plan_verifies_its_shrunk_kernels(mlp_files, tmp_path, cli):
    """`prune -s 0.97 --shrink --save-plan` then `verify --plan` on that run's own output exited 4 ('not
    checked': an element plan names no unit it removed). The plan now keeps each shrunk target's mask as
    --shrink cut it, so verify checks the shrunk kernels' zeros, and a weight set non-zero there fails."""
    import keras

    out, plan, report = tmp_path / "o.keras", tmp_path / "p.zip", tmp_path / "r.json"
    args = ("prune", mlp_files["keras"], "-s", "0.97", "--shrink", "--save-plan", plan, "-r", report, "-o", out, "-q")
    assert cli(*args).exit_code == 0
    saved = plan_file.read(plan)
    cut = [t for t in saved.targets if "shrunk" in t]
    assert cut and all(saved.shrunk_mask(t["name"]).shape != saved.mask(t["name"]).shape for t in cut)
    result = cli("verify", out, "--report", report, "--plan", plan)
    assert result.exit_code == 0, result.output
    assert "shrunk to" in result.output or "claims hold" in result.output
    model = keras.saving.load_model(out)
    name = cut[0]["name"]
    variable = next(v for v in model.weights if plan_file.stable_path(v.path) == plan_file.stable_path(name))
    kernel = np.asarray(variable)
    kernel[~saved.shrunk_mask(name)] = 1.0
    variable.assign(kernel)
    model.save(tmp_path / "edited.keras")
    result = cli("verify", tmp_path / "edited.keras", "--plan", plan)
    assert result.exit_code == 4 and "weight(s) the plan prunes are non-zero (shrunk to" in result.stderr
