"""Every bad input gives the documented exit code and one clear line: no traceback, nothing executed.

The cases are listed in tests/bad_inputs/manifest.yaml; binary ones are built at test time by
tests/bad_inputs/make_corpus.py into a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prunecli import scoring
from prunecli.cli import main
from prunecli.errors import ExitCode

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "manifest.yaml").read_text(encoding="utf-8"))


def _load_corpus_module():
    spec = importlib.util.spec_from_file_location("make_corpus", HERE / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    _load_corpus_module().build(d)
    yield d
    os.chmod(d / "readonly_dir", 0o755)  # so the temporary folder can be removed


@pytest.fixture
def run_cli(monkeypatch, tmp_path):
    """Run prunecli in-process from an empty folder, with no PRUNECLI_* variables but `env`."""

    def invoke(args, env=None):
        for key in list(os.environ):
            if key.startswith("PRUNECLI_"):
                monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.chdir(tmp_path)
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 30
    allowed = {"id", "args", "exit", "fragment", "env", "marker", "skip_if_root", "requires_method", "requires_path"}
    for case in CASES:
        assert set(case) <= allowed, case["id"]
        assert case["exit"] in ExitCode.__members__, case["id"]
        assert case["fragment"].strip(), case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, corpus, tmp_path, run_cli):
    if case.get("skip_if_root") and os.geteuid() == 0:
        pytest.skip("root may write to a read-only folder")
    if case.get("requires_method") and case["requires_method"] not in scoring.available():
        pytest.skip(f"method {case['requires_method']} is not registered")
    if case.get("requires_path") and not Path(case["requires_path"]).exists():
        pytest.skip(f"{case['requires_path']} does not exist here")
    places = {"corpus": corpus, "text": HERE / "text", "out": tmp_path}
    args = [str(a).format(**places) for a in case["args"]] + ["-q"]
    inputs = {p: _sha256(p) for p in map(Path, args) if p.is_file() and p.is_relative_to(corpus)}

    result = run_cli(args, env=case.get("env"))

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("prunecli: error: "), lines[0]
    assert case["fragment"] in lines[0]
    assert result.exit_code == ExitCode[case["exit"]], lines[0]
    assert result.stdout == ""
    assert "Traceback" not in result.output
    if case.get("marker"):
        assert not Path(case["marker"].format(**places)).exists(), "the file's payload was executed"
    assert {p: _sha256(p) for p in inputs} == inputs, "an input file was modified"


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("custom_layer.h5", []), ("good.keras", ["-d", "wrong_shape.npz"])])
def test_a_real_process_prints_only_progress_and_the_error(corpus, tmp_path, name, extra):
    """Out of process, so that whatever TensorFlow or Keras write to the terminal is seen too."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRUNECLI_", "TF_CPP"))}
    proc = subprocess.run(
        [sys.executable, "-m", "prunecli", "prune", name, *extra, "-o", str(tmp_path / "o.keras")],
        cwd=corpus,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == ExitCode.BAD_INPUT
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("prunecli: error: ")
    assert all(line.startswith("· ") for line in lines[:-1]), proc.stderr
    assert proc.stdout == ""


def test_payloads_are_real_when_trust_is_given(corpus, tmp_path, run_cli):
    """The refusals above matter: with --unsafe the Lambda's code does run, and so would the pickle."""
    import numpy as np

    result = run_cli(
        ["prune", corpus / "lambda.keras", "--unsafe", "-d", corpus / "good.npz", "-o", tmp_path / "out.keras", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "MARKER_lambda").exists()

    marker = corpus / "MARKER_pickle"
    try:
        np.load(corpus / "pickled.npz", allow_pickle=True)["x"]
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


def test_extra_zip_members_are_never_extracted(corpus, tmp_path, run_cli):
    """A .keras with a member named ../../MARKER_config loads, and nothing is written outside."""
    result = run_cli(["prune", corpus / "zip_slip.keras", "-o", tmp_path / "out.keras", "-q"])
    assert result.exit_code == 0, result.output
    for folder in (tmp_path, tmp_path.parent, tmp_path.parent.parent, corpus.parent, corpus.parent.parent):
        assert not (folder / "MARKER_config").exists()


def test_force_allows_overwriting_the_input(corpus, tmp_path, run_cli):
    import keras

    model = tmp_path / "model.keras"
    shutil.copyfile(corpus / "good.keras", model)
    refused = run_cli(["prune", model, "-o", model, "-q"])
    assert refused.exit_code == ExitCode.OUTPUT
    before = _sha256(model)

    result = run_cli(["prune", model, "-o", model, "--force", "--scope", "layer", "-q"])

    assert result.exit_code == 0, result.output
    assert _sha256(model) != before
    kernel = keras.saving.load_model(model).get_layer("hidden").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "a temporary file was left behind"


def test_h5_whose_training_config_keras_cannot_restore_still_prunes(corpus, tmp_path, run_cli):
    """Keras fails on loss="mse" in its own .h5; the loader retries without the training config."""
    import keras

    with pytest.raises(ValueError, match="mse"):
        keras.saving.load_model(corpus / "mse_compiled.h5")

    result = run_cli(["prune", corpus / "mse_compiled.h5", "-o", tmp_path / "out.h5", "--scope", "layer", "-q"])

    assert result.exit_code == 0, result.output
    kernel = keras.saving.load_model(tmp_path / "out.h5", compile=False).get_layer("hidden").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.02)


def test_every_data_driven_method_asks_for_data(corpus, run_cli):
    needing = [name for name in scoring.available() if scoring.get(name).needs_data]
    for name in needing:
        result = run_cli(["prune", corpus / "good.keras", "-m", name, "-q"])
        assert result.exit_code == ExitCode.USAGE, name
        assert result.stderr.strip() == f"prunecli: error: method {name!r} needs --data"


def test_debug_env_var_is_not_a_setting(corpus, tmp_path, run_cli):
    """PRUNECLI_DEBUG switches tracebacks on; it is not an unknown PRUNECLI_ setting."""
    result = run_cli(["prune", corpus / "nan_weights.keras", "-q"], env={"PRUNECLI_DEBUG": "1"})
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "contains NaN or Inf" in result.stderr.splitlines()[-1]
    assert "Traceback" in result.stderr  # asked for, so shown


# ---------------------------------------------------------------------------------------------
# issue 18: adversarial cases (adversarial.yaml), each in a child process with a memory cap and a
# timeout; batch cases share one child (one TensorFlow import), which is restarted after a crash.

ADVERSARIAL = yaml.safe_load((HERE / "adversarial.yaml").read_text(encoding="utf-8"))


def _runner():
    spec = importlib.util.spec_from_file_location("run_cases", HERE / "run_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_batches(runner, cases: list, places: dict, work: Path) -> dict:
    import json
    import subprocess
    import sys

    results: dict = {}
    pending, attempt = list(cases), 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECLI_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    while pending:
        attempt += 1
        spec, log = work / f"cases{attempt}.json", work / f"results{attempt}.jsonl"
        spec.write_text(json.dumps({"cases": pending, "places": places}))
        budget = sum(c.get("timeout", runner.DEFAULT_TIMEOUT) for c in pending) + 120
        try:
            proc = subprocess.run(
                [sys.executable, str(HERE / "run_cases.py"), str(spec), str(log)],
                env=env,
                capture_output=True,
                timeout=budget,
                preexec_fn=runner.limit_memory,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        started = []
        if log.exists():
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("started"):
                    started.append(entry["id"])
                else:
                    results[entry["id"]] = entry
        for case_id in started:
            if case_id not in results:  # the child died (or hung beyond its alarm) in this case
                what = "hang" if code is None else f"child ended with {code}"
                results[case_id] = {"id": case_id, "exit": code, "problems": [what], "seconds": 0.0}
        if not started:
            for case in pending:
                results[case["id"]] = {"id": case["id"], "exit": code, "problems": ["runner failed"], "seconds": 0}
        pending = [c for c in pending if c["id"] not in results]
    return results


ADVERSARIAL_SHARDS = 2  # pytest-xdist's two workers share the ~2 minutes: each shard starts its own batch child


def _places(corpus: Path, work: Path) -> dict:
    return {
        "corpus": str(corpus),
        "text": str(HERE / "text"),
        "outroot": str(work / "out"),
        "nonutf8": os.fsdecode(os.fsencode(str(corpus)) + b"/model_\xff.keras"),
    }


def _runnable(cases: list, places: dict) -> list:
    return [c for c in cases if not c.get("requires") or os.path.lexists(c["requires"].format(**places))]


def _shard(cases: list, shard: int) -> list:
    """Every ADVERSARIAL_SHARDS-th batch case and every ADVERSARIAL_SHARDS-th process case from `shard` on,
    so that each shard holds about as many of the slow architecture cases and real processes as the other."""
    batch = [c for c in cases if c.get("mode", "batch") == "batch"]
    process = [c for c in cases if c.get("mode") == "process"]
    return batch[shard::ADVERSARIAL_SHARDS] + process[shard::ADVERSARIAL_SHARDS]


def _adversarial_results(shard: int, places: dict, work: Path) -> dict:
    """Run the shard's cases: one batch child for the in-process cases and real processes beside it."""
    runner = _runner()
    cases = _runnable(_shard(ADVERSARIAL, shard), places)
    batch = [c for c in cases if c.get("mode", "batch") == "batch"]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:  # the batch child and two real processes at a time
        batch_results = pool.submit(_run_batches, runner, batch, places, work)
        single = [pool.submit(runner.run_process, c, places) for c in cases if c.get("mode") == "process"]
        results = batch_results.result()
        results.update({f.result()["id"]: f.result() for f in single})
    rows: dict = {}
    for case in _shard(ADVERSARIAL, shard):
        verdict = results.get(case["id"])
        family = rows.setdefault(case["family"], {"cases": 0, "skipped": 0, "failed": 0, "exits": {}})
        family["cases"] += 1
        if verdict is None:
            family["skipped"] += 1
            continue
        family["failed"] += bool(verdict["problems"])
        family["exits"][verdict["exit"]] = family["exits"].get(verdict["exit"], 0) + 1
    table = [
        f"shard {shard + 1} of {ADVERSARIAL_SHARDS}",
        "family         cases  failed  skipped  exit codes (code: count)",
    ]
    for name, row in rows.items():
        exits = ", ".join(f"{k}: {v}" for k, v in sorted(row["exits"].items(), key=lambda kv: str(kv[0])))
        table.append(f"{name:<14} {row['cases']:>5}  {row['failed']:>6}  {row['skipped']:>7}  {exits}")
    summary = os.environ.get("PRUNECLI_ADVERSARIAL_SUMMARY")  # for the closing note: one file a shard
    if summary:
        slowest = sorted(results.values(), key=lambda v: -v["seconds"])[:12]
        table += ["", "slowest:"] + [f"  {v['id']}: {v['seconds']:.1f} s" for v in slowest]
        Path(f"{summary}.{shard + 1}").write_text("\n".join(table) + "\n")
    return results


def test_adversarial_manifest_is_well_formed():
    ids = [c["id"] for c in ADVERSARIAL]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert not set(ids) & {c["id"] for c in CASES}, "ids must not repeat manifest.yaml's"
    assert len(ADVERSARIAL) >= 80
    runner = _runner()
    for case in ADVERSARIAL:
        want = case["exit"] if isinstance(case["exit"], list) else [case["exit"]]
        assert all(w in runner.EXIT_CODES for w in want), case["id"]
        assert case.get("mode", "batch") in ("batch", "process"), case["id"]


def test_adversarial_shards_hold_every_case_once():
    ids = [c["id"] for shard in range(ADVERSARIAL_SHARDS) for c in _shard(ADVERSARIAL, shard)]
    assert sorted(ids) == sorted(c["id"] for c in ADVERSARIAL)


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(ADVERSARIAL_SHARDS))
def test_adversarial(corpus, tmp_path, shard):
    """A test a shard: as a fixture shared by parametrised cases, pytest-xdist ran the ~2 minute batch once
    on every worker that received a case; one test for the whole batch kept one worker busy alone at the
    end of the suite. Each shard runs its own cases only, in a batch child of its own."""
    places = _places(corpus, tmp_path)
    runnable = _runnable(ADVERSARIAL, places)
    assert len(runnable) >= 80, f"only {len(runnable)} adversarial cases can run here"
    cases = _runnable(_shard(ADVERSARIAL, shard), places)
    results = _adversarial_results(shard, places, tmp_path)
    assert sorted(results) == sorted(c["id"] for c in cases), "a case of this shard did not run"
    failures = [
        f"{case['id']}: {results[case['id']]['problems']} (stderr: {results[case['id']].get('stderr', '')!r})"
        for case in cases
        if results[case["id"]]["problems"]
    ]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
