"""--strategy: the strategy factory, and fine-tuning replicated across devices and worker processes.

TensorFlow fixes its devices when it initialises, so the replicated runs happen in fresh Python
processes started here: one splits the CPU into two logical devices for MirroredStrategy, two more
form a MultiWorkerMirroredStrategy cluster on 127.0.0.1. Each compares with a single-device run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from prunecli import build_config
from prunecli.errors import ConfigError
from prunecli.training import distribute

# polynomial: masks are re-scored and re-applied while the replicas train, then held
SETTINGS = {  # layer-wise, so each kernel's zeros can be counted exactly
    "scope": "layer",
    "sparsity": 0.7,
    "epochs": 2,
    "schedule": "polynomial",
    "l1": 1e-4,
    "optimizer": "sgd:momentum=0.9",
    "learning_rate": 0.05,
}
RUN_TIMEOUT_S = 240

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mode, model_path, data_path, out_dir, settings = sys.argv[1:6]
    settings = json.loads(settings)
    from prunecli import build_config, prune
    from prunecli.training import distribute
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        runs = {"default": "default.keras", "mirrored": "mirrored.keras"}
    else:
        distribute.get_strategy("multiworker")  # collective ops: before TensorFlow runs anything
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        runs = {"multiworker": "model.keras"}  # both workers are given the same output: only the chief writes

    out = {}
    for strategy, name in runs.items():
        config = build_config({"model_path": model_path, "data": data_path, "output": os.path.join(out_dir, name),
                               "strategy": strategy, **settings})
        result = prune(config)
        out[strategy] = {"path": str(result.output_path), "metrics": result.report.metrics,
                         "distribute": result.report.extra["finetune"]["distribute"]}

    if mode == "multiworker":  # this worker's weights, and data-driven scores over both workers vs on one device
        import numpy as np
        from prunecli.io import data as data_mod
        from prunecli.scoring import get, ScoringContext
        from prunecli.structure import targets as targets_mod
        from prunecli.io.models import load

        np.savez(os.path.join(out_dir, f"weights{index}.npz"), *[np.asarray(w) for w in result.model.weights])
        out["chief"] = distribute.is_chief()
        model, _ = load(model_path)
        data = data_mod.load(data_path, model, 32, 0.0, 0)
        from prunecli.training.metrics import infer_task
        loss = infer_task(model, data.y_example).loss
        found = targets_mod.select(model)
        scores = {}
        for method in ("gradient", "taylor", "activation", "apoz"):
            for where, strategy in (("single", None), ("workers", distribute.get_strategy("multiworker"))):
                data = data_mod.load(data_path, model, 32, 0.0, 0)  # a fresh pipeline: its first shuffle
                ctx = ScoringContext(model=model, targets=found, data=data.train, loss_fn=loss, max_batches=5,
                                     extras={} if strategy is None else {"strategy": strategy})
                result_scores = get(method).fn(found, ctx)
                scores[f"{method}/{where}"] = {k: np.asarray(v).ravel().tolist() for k, v in result_scores.items()}
        out["scores"] = scores

    if mode == "mirrored":  # a data-driven sum (as scoring makes) over both replicas vs on one device
        import keras
        model = keras.saving.load_model(model_path)
        x = tf.data.Dataset.from_tensor_slices(tf.random.stateless_normal((203, 20), seed=(1, 2))).batch(32)
        data = tf.data.Dataset.zip(x, x)

        def batch_sums(x, _y):  # a sum over examples, and a signed sum whose |.| is taken per global batch
            pred = model(x)
            return tf.reduce_sum(tf.abs(pred)), tf.cast(tf.shape(x)[0], tf.float32), tf.reduce_sum(x[:, 0])

        def per_batch(sums):
            return sums[0], sums[1], tf.abs(sums[2])

        for strategy in ("default", "mirrored"):
            from prunecli.scoring import ScoringContext
            from prunecli.scoring._data import accumulate
            ctx = ScoringContext(model=model, targets=[], data=data, extras={"strategy": distribute.get_strategy(strategy)})
            totals, batches = accumulate(ctx, "scoring", batch_sums, then=per_batch)
            out[strategy]["scoring_sum"] = [float(t) for t in totals] + [batches]
    print(json.dumps(out))
    """
)


def _launch(mode: str, files, out_dir: Path, env: dict | None = None) -> subprocess.Popen:
    args = [
        sys.executable,
        "-c",
        SCRIPT,
        mode,
        str(files["keras"]),
        str(files["data"]),
        str(out_dir),
        json.dumps(SETTINGS),
    ]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def _finish(procs: list[subprocess.Popen]) -> list[dict]:
    """Wait for every process (bounded); a hung one (a worker whose peer died) is killed."""
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def _weights(path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path).weights]


def _kernels(weights: list[np.ndarray]) -> list[np.ndarray]:
    return [w for w in weights if w.ndim == 2]


@pytest.fixture(scope="module")
def mirrored_runs(mlp_files, tmp_path_factory):
    """Fine-tuning on one device and under MirroredStrategy over two logical CPUs, same process."""
    out_dir = tmp_path_factory.mktemp("mirrored")
    (result,) = _finish([_launch("mirrored", mlp_files, out_dir)])
    return result


@pytest.mark.slow
def test_mirrored_runs_on_two_replicas(mirrored_runs):
    assert mirrored_runs["mirrored"]["distribute"] == {"strategy": "MirroredStrategy", "replicas": 2}
    assert mirrored_runs["default"]["distribute"]["replicas"] == 1


@pytest.mark.slow
def test_mirrored_fine_tuning_holds_the_same_masks(mirrored_runs):
    single = _kernels(_weights(mirrored_runs["default"]["path"]))
    mirrored = _kernels(_weights(mirrored_runs["mirrored"]["path"]))
    for a, b in zip(single, mirrored, strict=True):
        assert np.array_equal(a == 0, b == 0), "the replicated run pruned or regrew other weights"
        assert np.count_nonzero(b == 0) == round(SETTINGS["sparsity"] * b.size), "masks not held exactly"


@pytest.mark.slow
def test_mirrored_fine_tuning_matches_one_device(mirrored_runs):
    """Loss shares weighted by each replica's part of the global batch: the same updates as on one device
    (the MLP has no batch norm, whose batch statistics would legitimately differ per replica)."""
    for a, b in zip(
        _weights(mirrored_runs["default"]["path"]), _weights(mirrored_runs["mirrored"]["path"]), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)
    single, mirrored = (mirrored_runs[k]["metrics"]["after_finetune"] for k in ("default", "mirrored"))
    assert mirrored["accuracy"] == pytest.approx(single["accuracy"], abs=1e-6)
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-4)


@pytest.mark.slow
def test_scoring_sums_cover_every_replica(mirrored_runs):
    single, mirrored = mirrored_runs["default"]["scoring_sum"], mirrored_runs["mirrored"]["scoring_sum"]
    assert single[1] == mirrored[1] == 203.0, "examples counted once each, over both replicas"
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)
    assert mirrored[2] == pytest.approx(single[2], rel=1e-5), "the non-linear step saw a replica's share"
    assert single[3] == mirrored[3] == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def multiworker_runs(mlp_files, tmp_path_factory):
    """Two worker processes, one replica each, all-reducing over 127.0.0.1, given the same -o."""
    out_dir = tmp_path_factory.mktemp("multiworker")
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    procs = [
        _launch(
            "multiworker",
            mlp_files,
            out_dir,
            {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})},
        )
        for i in range(2)
    ]
    return {"results": _finish(procs), "dir": out_dir}


@pytest.mark.slow
def test_multiworker_on_localhost_matches_one_device(multiworker_runs, mirrored_runs):
    """The workers end with the same weights, and those are the single-device run's."""
    results, out_dir = multiworker_runs["results"], multiworker_runs["dir"]
    roles = [(r["multiworker"]["distribute"]["task_id"], r["multiworker"]["distribute"]["chief"]) for r in results]
    assert roles == [(0, True), (1, False)]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["multiworker"]["distribute"]["replicas"] == 2 for r in results)
    first, second = (list(np.load(out_dir / f"weights{i}.npz").values()) for i in range(2))
    for a, b, single in zip(first, second, _weights(mirrored_runs["default"]["path"]), strict=True):
        assert np.array_equal(a, b), "the workers drifted apart"
        np.testing.assert_allclose(a, single, atol=1e-5)


@pytest.mark.slow
def test_multiworker_only_the_chief_writes(multiworker_runs):
    """Both workers were given the same output path; worker 1 writes nothing and says so by returning
    no output path; the chief's file holds the trained weights."""
    results, out_dir = multiworker_runs["results"], multiworker_runs["dir"]
    assert [r["multiworker"]["path"] for r in results] == [str(out_dir / "model.keras"), "None"]
    assert sorted(p.name for p in out_dir.iterdir() if p.suffix != ".npz") == ["model.keras"]
    chief = list(np.load(out_dir / "weights0.npz").values())
    for a, b in zip(_weights(out_dir / "model.keras"), chief, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient", "taylor", "activation", "apoz"])
def test_multiworker_scoring_equals_one_device(multiworker_runs, method):
    """Each worker scores half of every global batch; the all-reduced statistics are the whole data's,
    on both workers, and equal the single-device scores within 1e-6."""
    for result in multiworker_runs["results"]:
        single, workers = result["scores"][f"{method}/single"], result["scores"][f"{method}/workers"]
        assert single.keys() == workers.keys()
        for name in single:
            a, b = np.asarray(single[name]), np.asarray(workers[name])
            assert np.abs(a).max() > 0, "a statistic that is all zero would prove nothing"
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max(), err_msg=name)
    first, second = (r["scores"] for r in multiworker_runs["results"])
    assert first == second, "both workers end with the same scores"


def test_strategy_names_are_checked_before_work(monkeypatch):
    with pytest.raises(ConfigError, match="unknown strategy 'gpu'"):
        build_config({"model_path": "m.keras", "strategy": "gpu"})
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        build_config({"model_path": "m.keras", "strategy": "multiworker"})
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_config({"model_path": "m.keras", "strategy": "multiworker"})


def test_tpu_without_a_tpu_is_one_clear_error(cli, mlp_files, tmp_path):
    result = cli(
        "prune",
        mlp_files["keras"],
        "--data",
        mlp_files["data"],
        "--epochs",
        "1",
        "--strategy",
        "tpu",
        "-o",
        tmp_path / "out.keras",
        "-q",
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--strategy tpu: no TPU available here" in lines[0]
    assert "Traceback" not in result.output


def test_default_strategy_trains_the_loaded_model_itself(mlp_files):
    """No copy, no distributed dataset: the default strategy leaves the single-device path as it was."""
    from types import SimpleNamespace

    import tensorflow as tf

    strategy = distribute.get_strategy("default")
    assert distribute.is_default(strategy) and distribute.get_strategy("default") is strategy
    job = SimpleNamespace(model=object(), targets=[])  # what fine-tuning hands to `replicated`
    with distribute.replicated(job, strategy):
        assert type(job.model) is object
    dataset = tf.data.Dataset.range(3)
    assert distribute.distribute_batches(strategy, dataset) is dataset


def _lonely_worker(mlp_files, tmp_path, *extra: str) -> subprocess.Popen:
    """Worker 1 of a two-worker cluster whose worker 0 (the leader) never starts."""
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}
    args = [sys.executable, "-m", "prunecli", "prune", str(mlp_files["keras"]), "--strategy", "multiworker"]
    args += ["--data", str(mlp_files["data"]), "--epochs", "1", "-o", str(tmp_path / "out.keras"), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def _last_line(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    prunecli_lines = [line for line in stderr.splitlines() if line.startswith("prunecli:")]
    return proc.returncode, prunecli_lines[-1] if prunecli_lines else stderr[-2000:]


@pytest.mark.slow
def test_a_worker_whose_peers_never_start_stops_at_worker_wait(mlp_files, tmp_path):
    """TensorFlow waits an hour by default for a task that never comes; --worker-wait bounds it."""
    code, line = _last_line(_lonely_worker(mlp_files, tmp_path, "--worker-wait", "3"), RUN_TIMEOUT_S)
    assert code == 2, line
    assert 'the cluster\'s leader ("worker" 0 at 127.0.0.1:' in line and "within 3 s (--worker-wait)" in line
    assert not (tmp_path / "out.keras").exists()


@pytest.mark.slow
def test_sigterm_stops_a_worker_waiting_for_its_leader(mlp_files, tmp_path):
    """SIGTERM during the wait for the cluster's leader ends the run at once: exit 130, nothing written
    (TensorFlow's own wait is native code where Python's handlers do not run; prunecli waits first)."""
    import signal
    import time

    proc = _lonely_worker(mlp_files, tmp_path)
    waiting = ""
    while proc.poll() is None and "waiting up to" not in waiting:  # the progress line says it waits
        waiting = proc.stderr.readline()
    assert proc.poll() is None, "the worker ended before it waited for its leader"
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    code, line = _last_line(proc, 30)
    assert code == 130 and line == "prunecli: interrupted", line
    assert not (tmp_path / "out.keras").exists()
