"""Spec files: the small YAML/JSON file that describes an image folder's or a TFRecord's data
(`NAME.spec.yaml` beside `NAME.tfrecord`, or `spec.yaml` in the folder)."""

from __future__ import annotations

import math
from pathlib import Path

from prunecli.config.checks import yaml_loader
from prunecli.errors import DataError


def find_spec(path: str) -> Path | None:
    """`NAME.spec.yaml|yml|json` beside a file, else `spec.yaml|yml|json` in its (or the glob's) folder."""
    p = Path(path)
    candidates = []
    if p.is_dir():
        folder = p
    else:
        folder = p.parent
        if not any(ch in p.name for ch in "*?["):
            candidates += [p.with_name(f"{p.stem}.spec{ext}") for ext in (".yaml", ".yml", ".json")]
    candidates += [folder / f"spec{ext}" for ext in (".yaml", ".yml", ".json")]
    return next((c for c in candidates if c.is_file()), None)


def read_spec(path: Path | None) -> dict:
    import yaml

    if path is None:
        return {}
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read data spec {path}: {first}") from exc
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"data spec {path} must be a mapping")
    unknown = set(spec) - {"x", "y", "scale", "compression", "eval"}
    if unknown:
        raise DataError(f"data spec {path}: unknown key {sorted(unknown)[0]!r} (use x, y, scale, compression, eval)")
    scale = spec.get("scale")
    if "scale" in spec and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0
    ):
        raise DataError(f"data spec {path}: scale must be a finite non-zero number, got {scale!r}")
    return spec


def scaled(ds, scale):
    if scale is None:
        return ds
    import tensorflow as tf

    return ds.map(lambda x, y: (x * tf.constant(float(scale), tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
