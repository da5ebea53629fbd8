"""Sizes that cost little (streamed igzip) and masks built a chunk of layers at a time.

The chunked path must give exactly today's masks, requested sparsities and notes: it is only an
order of work that holds less memory, never another policy.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess

import numpy as np
import pytest

from prunecli import build_config
from prunecli.io import models as model_io
from prunecli.selection import chunked, kernels, policy
from prunecli.structure import targets as targets_mod


def _sample_file(tmp_path, size: int = 3 * (8 << 20) + 12345):
    """Float weights and zeros, over three 8 MiB read chunks, so the stream crosses chunk boundaries."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(size // 8).astype(np.float32).tobytes()
    data = (weights + bytes(size))[:size]
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    return path, data


def test_streamed_size_is_that_of_a_real_gzip_stream_whatever_the_threads(tmp_path):
    """The figure is the length of a gzip stream of the file, 1 MiB blocks of igzip level 1 (python-isal's
    igzip_threaded fed one block per write): the same on 1 and 2 threads, and it gunzips to the file."""
    import io

    from isal import igzip_threaded

    path, data = _sample_file(tmp_path)
    one, two = model_io.file_sizes(path, threads=1), model_io.file_sizes(path, threads=2)
    assert one == two

    class Kept(io.BytesIO):
        def close(self):
            self.kept = self.getvalue()
            super().close()

    stream = Kept()
    with igzip_threaded.open(stream, "wb", compresslevel=1, threads=1, block_size=1 << 20) as gz:
        for i in range(0, len(data), 1 << 20):
            gz.write(data[i : i + (1 << 20)])
    written = stream.kept if stream.closed else stream.getvalue()
    assert one["bytes"] == len(data)
    assert one["gzip_bytes"] == len(written) > 0
    assert gzip.decompress(written) == data
    assert one["gzip_codec"] == "ISA-L igzip level 1, 1 MiB blocks"


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip on this machine")
def test_streamed_size_is_close_to_gnu_gzip_at_the_same_level(tmp_path):
    path, _ = _sample_file(tmp_path)
    gnu = len(subprocess.run(["gzip", "-1", "-n", "-c", str(path)], capture_output=True, check=True).stdout)
    ours = model_io.file_sizes(path)["gzip_bytes"]
    assert abs(ours - gnu) / gnu < 0.03, (ours, gnu)


def test_sizes_in_background_gives_the_same_figures(tmp_path):
    path, _ = _sample_file(tmp_path, size=1 << 20)
    assert model_io.sizes_in_background(path).result() == model_io.file_sizes(path)


def test_the_output_digest_comes_from_the_same_read(tmp_path):
    """The report's sha256 of the output (what `prunecli verify` checks) is read with its sizes."""
    from prunecli.io.plan_file import file_sha256

    path, _ = _sample_file(tmp_path, size=(3 << 20) + 17)  # blocks of 1 MiB and a partial one
    both = model_io.sizes_in_background(path, threads=2, sha256=True).result()
    assert both == {**model_io.file_sizes(path), "sha256": file_sha256(path)}
    alone = model_io.sizes_in_background(path, gzip=False, sha256=True).result()
    assert alone == {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


# ---- masks a chunk at a time -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, name="c2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(40, name="d1")(x)
    x = keras.layers.Dense(24, name="d2")(x)
    out = keras.layers.Dense(5, name="head")(x)
    return keras.Model(inp, out)


def _scores(targets, tied: bool):
    """|w| scores; with `tied`, rounded to a few values so many ties sit at every threshold."""
    import tensorflow as tf

    out = {}
    for t in targets:
        s = tf.abs(tf.convert_to_tensor(t.variable))
        out[t.name] = tf.round(s * 20.0) / 20.0 if tied else s
    return out


CONFIGS = [
    {"sparsity": 0.5},
    {"sparsity": 0.9, "min_keep": 0.3},  # floors bind: notes in target order
    {"sparsity": 0.7, "granularity": "block:2x2"},
    {"granularity": "n:m=2:4"},
    {"threshold": "mean"},
    {"threshold": 0.05},
    {"sparsity": 0.6, "overrides": {"d1": 0.2, "c1": "skip"}},
    {"sparsity": 0.6, "overrides": {"d2": 0.95, "c1": "skip"}, "min_keep": 0.2},  # an override's floor too
    {"sparsity": 0.8, "normalize": "erk"},
]


@pytest.mark.parametrize(
    ("settings", "scope"),
    [
        pytest.param(c, scope, id=f"{scope}-{c}")
        for c in CONFIGS
        for scope in ("layer", "global")
        if not (scope == "layer" and c.get("normalize") == "erk")  # refused: ERK shares a global budget
    ],
)
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "ties"])
def test_chunked_masks_equal_all_at_once(small_model, settings, scope, tied):
    """Layer-wise, and global LAMP/ERK (a count per layer decided first from scores given again per pass;
    d1 has more weights than lamp.EXACT, so its LAMP count comes from a sampled band)."""
    config = build_config({"model_path": "m.keras", "scope": scope, **settings})
    found = targets_mod.select(small_model)
    assert chunked.layer_independent(config, model=None)
    scores = _scores(found, tied)
    whole = policy.build_masks(found, scores, "element", config)
    applied = {}
    for limit in (1, 500, 2_000):  # one tensor per chunk, a few per chunk, most in one
        assert len(chunked.chunks(found, limit)) > 1
        parts = dict(scores)
        result = chunked.mask_in_chunks(
            found,
            lambda ts, parts=parts: {t.name: parts[t.name] for t in ts},
            "element",
            config,
            lambda variables, masks: applied.update(zip([id(v) for v in variables], masks, strict=True)),
            limit=limit,
            done=lambda ts, parts=parts: [parts.pop(t.name) for t in ts],
        )
        assert not parts, "every chunk's scores were dropped once applied"
        assert list(result.masks) == list(whole.masks)
        for t in found:
            assert np.array_equal(np.asarray(result.masks[t.name]), np.asarray(whole.masks[t.name])), t.name
            assert np.array_equal(np.asarray(applied[id(t.variable)]), np.asarray(whole.masks[t.name]))
        assert result.requested == whole.requested
        assert result.notes == whole.notes
        assert result.selection_path == whole.selection_path


def test_chunked_masking_zeroes_the_same_weights(small_model):
    """Applied for real with kernels.apply_masks, on a copy of the weights."""
    import keras

    config = build_config({"model_path": "m.keras", "sparsity": 0.75, "scope": "layer"})
    found = targets_mod.select(small_model)
    expected = policy.build_masks(found, _scores(found, False), "element", config)
    saved = small_model.get_weights()
    try:
        chunked.mask_in_chunks(found, lambda ts: _scores(ts, False), "element", config, kernels.apply_masks, limit=300)
        for t in found:
            kept = np.asarray(keras.ops.convert_to_numpy(t.variable)) != 0
            assert np.array_equal(kept, np.asarray(expected.masks[t.name])), t.name
    finally:
        small_model.set_weights(saved)


def test_chunks_keep_order_and_put_a_large_tensor_alone(small_model):
    found = targets_mod.select(small_model)
    sizes = [int(t.size) for t in found]
    parts = chunked.chunks(found, max(sizes) - 1)
    assert [t for part in parts for t in part] == found
    biggest = found[sizes.index(max(sizes))]
    assert [biggest] in parts
    assert all(sum(int(t.size) for t in part) <= max(sizes) - 1 for part in parts if part != [biggest])


def test_global_ranking_of_raw_scores_and_tied_sets_are_not_chunked(small_model):
    assert not chunked.layer_independent(build_config({"model_path": "m.keras", "normalize": "none"}))
    assert not chunked.layer_independent(build_config({"model_path": "m.keras", "normalize": "mean"}))
    assert chunked.layer_independent(build_config({"model_path": "m.keras"}))  # the default: global LAMP
    assert chunked.layer_independent(build_config({"model_path": "m.keras", "normalize": "erk"}))
    assert chunked.layer_independent(build_config({"model_path": "m.keras", "scope": "global", "threshold": 0.1}))
    neuron = build_config({"model_path": "m.keras", "granularity": "neuron"})
    assert not chunked.layer_independent(neuron, model=small_model)
    assert chunked.layer_independent(neuron, model=None)


def test_packed_masks_give_back_the_same_bool_tensors():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    masks = chunked.PackedMasks()
    shapes = {"a": (3, 5, 7), "b": (13,), "c": (1, 1)}
    originals = {name: rng.random(shape) < 0.4 for name, shape in shapes.items()}
    for name, mask in originals.items():
        masks[name] = tf.constant(mask)
    assert list(masks) == list(shapes) and len(masks) == 3
    for name, mask in originals.items():
        got = masks[name]
        assert got.dtype == tf.bool and tuple(got.shape) == shapes[name]
        assert np.array_equal(np.asarray(got), mask)
    del masks["b"]
    assert "b" not in masks and list(masks) == ["a", "c"]
