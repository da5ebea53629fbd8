"""The same run with the same --seed gives bit-identical masks and weights, for every method.

Data-driven methods shuffle their batches from the seed, random scores are drawn from it, and the
selection breaks ties by position, so nothing depends on timing or thread order. The seed is part
of the report (settings.seed), so a run can be repeated from its report alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli import build_config, prune, scoring
from prunecli.config.fields import BATCH_SCORED_METHODS


def _run(mlp_files, method: str, seed: int, out):
    needs_data = scoring.get(method).needs_data
    config = build_config(
        {
            "model_path": str(mlp_files["h5"]),
            "output": str(out),
            "method": method,
            "sparsity": 0.6,
            "seed": seed,
            "data": str(mlp_files["data"]) if needs_data else None,
            # read by the batch-scored methods only; refused without --data and by the others
            "score_batches": 2 if method in BATCH_SCORED_METHODS else None,
            "batch_size": 32 if needs_data else 64,
            "quiet": True,
            "sizes": False,
        },
        environ={},
    )
    return prune(config)


def _bits(tensor) -> bytes:
    """The exact bytes, so -0.0 vs 0.0 or a changed NaN payload would count as a difference."""
    return np.ascontiguousarray(np.asarray(tensor)).tobytes()


def _h5_arrays(path) -> dict[str, bytes]:
    import h5py

    found = {}

    def collect(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()].tobytes()

    with h5py.File(path, "r") as f:
        f.visititems(collect)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("method", scoring.available())
def test_same_seed_same_masks_and_weights(mlp_files, tmp_path, method):
    first = _run(mlp_files, method, 7, tmp_path / "first.h5")
    second = _run(mlp_files, method, 7, tmp_path / "second.h5")

    assert sorted(first.masks.masks) == sorted(second.masks.masks)
    for name, mask in first.masks.masks.items():
        assert _bits(mask) == _bits(second.masks.masks[name]), f"{method}: mask of {name} differs"
    assert [w.path for w in first.model.weights] == [w.path for w in second.model.weights]
    for a, b in zip(first.model.weights, second.model.weights, strict=True):
        assert _bits(a) == _bits(b), f"{method}: {a.path} differs"
    assert _h5_arrays(tmp_path / "first.h5") == _h5_arrays(tmp_path / "second.h5")
    assert first.report.settings["seed"] == 7
    assert first.report.totals["prunable_sparsity"] == pytest.approx(0.6, abs=0.02)


def test_the_seed_changes_random_masks(mlp_files, tmp_path):
    """The check above would pass vacuously if the seed were ignored; it is not."""
    a = _run(mlp_files, "random", 7, tmp_path / "a.h5").masks.masks
    b = _run(mlp_files, "random", 8, tmp_path / "b.h5").masks.masks
    assert any(_bits(a[name]) != _bits(b[name]) for name in a)


def test_cli_runs_repeat_and_report_their_seed(cli, mlp_files, tmp_path):
    for name in ("one", "two"):
        result = cli(
            "prune",
            mlp_files["keras"],
            "-m",
            "random",
            "--seed",
            "3",
            "-s",
            "0.7",
            "-o",
            tmp_path / f"{name}.h5",
            "-r",
            tmp_path / f"{name}.json",
            "-q",
            "--no-sizes",
        )
        assert result.exit_code == 0, result.output

    assert _h5_arrays(tmp_path / "one.h5") == _h5_arrays(tmp_path / "two.h5")
    for name in ("one", "two"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["settings"]["seed"] == 3
        assert report["settings"]["method"] == "random"
