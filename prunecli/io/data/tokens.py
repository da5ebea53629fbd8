"""Token data for language models: token ids in an `.npz`, or plain text tokenised by the model's own
tokenizer.

* `.npz` with `token_ids` (N x T integers) and optional `padding_mask` (N x T, 1 = real token), or
  `token_ids_train` (+ `padding_mask_train`) with `token_ids_test` and/or `token_ids_val`, as other
  .npz data splits.
* `.txt`: UTF-8 text, tokenised line by line (line ends kept) by the tokenizer saved with the model
  (a KerasHub task's preprocessor), joined into one stream and cut into rows of the preprocessor's
  sequence length, each starting with the start token when the preprocessor adds one; the last row
  is padded. A model without a tokenizer is refused in one line.

The model is fed what KerasHub models take, `{"token_ids", "padding_mask"}` (or the ids alone, for a
plain Keras model with one integer input). Token ids stay integers. For a causal LM
(structure/language.py) the labels are the next tokens: position t is labelled with token t + 1 when
both are real tokens, and NO_TOKEN (-1) otherwise (the last position, padding), which the next-token
loss skips; evaluation then reports perplexity (training/metrics.py). For any other token model (a
backbone, whose outputs are hidden states) the rows are inputs without labels, which calibration and
the other label-free methods read.
"""

from __future__ import annotations

import stat
from pathlib import Path

from prunecli.errors import DataError
from prunecli.io.data.batches import Data, batched, split_indices
from prunecli.structure import language

NO_TOKEN = -1  # the label of a position that has no next token: the loss and perplexity skip it
SPLITS = (("train", "_train"), ("eval", "_test"), ("val", "_val"))
TEXT_LIMIT = 512 * 2**20  # bytes of text read into memory at most
TEXT_LINES = 4096  # lines handed to the tokenizer at once
DEFAULT_LENGTH = 512  # tokens per row of text when the preprocessor names no sequence length


def is_token_npz(arrays: dict) -> bool:
    return "token_ids" in arrays or "token_ids_train" in arrays


def load_token_npz(p: Path, arrays: dict, model, batch_size: int, val_split: float, seed: int) -> Data:
    """The .npz's token splits, checked against the model, as batches (see the module docstring)."""
    _check_model(model, p)
    split = "token_ids_train" in arrays
    read = {f"{kind}{suffix}" for kind in ("token_ids", "padding_mask") for _, suffix in SPLITS} if split else set()
    unread = sorted(set(arrays) - (read or {"token_ids", "padding_mask"}))
    if unread:  # a split member beside unsplit ids, or labels: token data is labelled by its own next tokens
        raise DataError(
            f"{p}: {', '.join(unread)} is not read with token data (token_ids and padding_mask"
            f"{', with _train/_test/_val suffixes' if split else ''}); remove it"
        )
    sets = {}
    for key, suffix in SPLITS:
        suffix = suffix if split else ("" if key == "train" else None)
        ids = None if suffix is None else arrays.get(f"token_ids{suffix}")
        mask = None if suffix is None else arrays.get(f"padding_mask{suffix}")
        if ids is None and mask is not None:
            raise DataError(f"{p}: padding_mask{suffix} has no token_ids{suffix} beside it")
        sets[key] = None if ids is None else _checked(ids, mask, model, p, f"token_ids{suffix}")
    if sets["eval"] is None:
        sets["eval"], sets["val"] = sets["val"], None
    return _data(sets, model, batch_size, val_split, seed, p)


def load_text(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    """Plain text tokenised by the model's own tokenizer, as rows of token ids (module docstring)."""
    tokenizer, length, start, pad = _text_tokenizer(model, p)
    ids = _tokenize(tokenizer, _read_text(p), p)
    limit = language.max_sequence_length(model)
    length = min(length, limit) if limit else length
    rows, mask = _rows(ids, length, start, pad)
    return _data(
        {"train": _checked(rows, mask, model, p, "text"), "eval": None, "val": None},
        model,
        batch_size,
        val_split,
        seed,
        p,
    )


def _check_model(model, path) -> None:
    if not language.is_token_model(model):
        names = language.input_names(model)
        raise DataError(
            f"{path}: token data feeds a language model (inputs token_ids and padding_mask, or one "
            f"integer input with an embedding); this model takes {names}"
        )


def _checked(ids, mask, model, path, name: str):
    """(token ids int32, padding mask int32) of one split, checked: 2-D integers in the vocabulary,
    a mask of 0/1 of the same shape, a length the model takes."""
    import numpy as np

    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise DataError(
            f"{path}: {name} must be a 2-D array of integer token ids (rows x positions), got {ids.ndim}-d {ids.dtype}"
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise DataError(f"{path}: {name} is empty")
    vocab = language.vocabulary_size(model)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise DataError(
            f"{path}: {name} holds token ids {low}..{high} but the model's vocabulary is 0..{(vocab or 1) - 1}"
        )
    limit = language.max_sequence_length(model)
    if limit is not None and ids.shape[1] > limit:
        raise DataError(f"{path}: {name} rows have {ids.shape[1]} positions but the model takes at most {limit}")
    if mask is None:
        mask = np.ones(ids.shape, np.int32)
    elif mask.shape != ids.shape:
        raise DataError(f"{path}: the padding mask of {name} has shape {mask.shape}, not {ids.shape}")
    elif mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        raise DataError(f"{path}: the padding mask of {name} must hold 0 (padding) and 1 (token) only")
    return ids.astype(np.int32), mask.astype(np.int32)


def next_tokens(ids, mask):
    """Each position's label: the next token where it and the position are both real, else NO_TOKEN."""
    import numpy as np

    y = np.full(ids.shape, NO_TOKEN, np.int32)
    real = (mask[:, :-1] > 0) & (mask[:, 1:] > 0)
    y[:, :-1] = np.where(real, ids[:, 1:], NO_TOKEN)
    return y


def _inputs(model, ids, mask):
    """What the model is called with: KerasHub's named inputs, or the ids alone."""
    names = language.input_names(model)
    if "token_ids" not in names:
        return ids
    return {n: (ids if n == "token_ids" else mask) for n in names}


def _data(sets: dict, model, batch_size: int, val_split: float, seed: int, path) -> Data:
    import numpy as np

    lm = language.is_causal_lm(model)
    labelled = {}
    for key, pair in sets.items():
        if pair is None:
            labelled[key] = None
            continue
        ids, mask = pair
        y = next_tokens(ids, mask) if lm else np.zeros(len(ids), np.float32)
        labelled[key] = (ids, mask, y)
    parts = split_indices(len(labelled["train"][0]), labelled, val_split, seed)
    train = labelled["train"]
    for key, idx in parts.items():
        labelled[key] = tuple(a[idx] for a in train)
    for key, triple in labelled.items():  # after --val-split: a held-out part of padding rows measured nothing
        if lm and triple is not None and not (triple[2] != NO_TOKEN).any():
            held = f" (the {len(triple[0])} rows --val-split {val_split:g} held out)" if key in parts else ""
            raise DataError(
                f"{path}: no position of its {key} rows{held} has a next token (every row is one token or"
                " padding): loss, perplexity and accuracy would be measured on nothing"
            )

    def batches(triple, shuffle_seed=None):
        ids, mask, y = triple
        return batched(_inputs(model, ids, mask), y, batch_size, shuffle_seed=shuffle_seed)

    ev = labelled["eval"] or labelled["train"]
    return Data(
        train=batches(labelled["train"], seed),
        eval=batches(ev),
        n_train=len(labelled["train"][0]),
        n_eval=len(ev[0]),
        y_example=ev[2][:256],
        source=str(path),
        val=None if labelled["val"] is None else batches(labelled["val"]),
        eval_held_out=labelled["eval"] is not None,
        labelled=lm,
        next_token=lm,
    )


# ---------------------------------------------------------------------------------------------------
# plain text


def _text_tokenizer(model, path):
    """(tokenizer, tokens per row, start token id or None, padding id) of the model's preprocessor;
    a one-line DataError when the model has none."""
    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None) or getattr(model, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        raise DataError(
            f"{path}: plain text needs the model's own tokenizer and this model has none saved with it "
            "(a KerasHub task with its preprocessor); give token ids as an .npz (token_ids, padding_mask)"
        )
    _check_model(model, path)
    length = getattr(preprocessor, "sequence_length", None)
    length = int(length) if isinstance(length, int) and length > 1 else DEFAULT_LENGTH
    start = getattr(tokenizer, "start_token_id", None) if getattr(preprocessor, "add_start_token", False) else None
    pad = getattr(tokenizer, "pad_token_id", None)
    return tokenizer, length, start, int(pad) if isinstance(pad, int) and pad >= 0 else 0


def _read_text(path: Path) -> str:
    from prunecli.messages import shown

    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {shown(path)}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{shown(path)} is not a regular file")
    if st.st_size > TEXT_LIMIT:
        raise DataError(
            f"{shown(path)} is {st.st_size / 2**20:.0f} MiB of text; prunecli reads at most {TEXT_LIMIT // 2**20} MiB (tokenise it into an .npz)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown(path)} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {shown(path)}: {exc.strerror or exc}") from exc


def _tokenize(tokenizer, text: str, path):
    """The text's token ids as one stream, tokenised a block of lines at a time."""
    import numpy as np
    import tensorflow as tf

    lines = text.splitlines(keepends=True)
    parts = []
    for i in range(0, len(lines), TEXT_LINES):
        try:
            out = tokenizer(tf.constant(lines[i : i + TEXT_LINES]))
        except Exception as exc:  # noqa: BLE001 - the tokenizer's own failure, as one line
            from prunecli.errors import first_line

            raise DataError(f"{path}: the model's tokenizer failed on the text ({first_line(exc)})") from exc
        parts.append(_flat_ids(out))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if ids.size == 0:
        raise DataError(f"{path}: the text gives no tokens")
    return ids


def _flat_ids(out):
    """A tokenizer's output for a batch of lines (a ragged or dense tensor, or nested lists, as
    KerasHub hands back for Python inputs) as one flat int64 array, in order."""
    import numpy as np
    import tensorflow as tf

    if isinstance(out, tf.RaggedTensor):
        return np.asarray(out.flat_values, np.int64)
    if isinstance(out, (list, tuple)):
        flat = [
            np.asarray(_flat_ids(item) if isinstance(item, (list, tuple)) else item, np.int64).reshape(-1)
            for item in out
        ]
        return np.concatenate(flat) if flat else np.zeros(0, np.int64)
    return np.asarray(out, np.int64).reshape(-1)


def _rows(ids, length: int, start, pad: int):
    """The stream cut into rows of `length` tokens (the first of each the start token, when given),
    the last row padded; (ids, padding mask)."""
    import numpy as np

    body = length - (1 if start is not None else 0)
    n = -(-len(ids) // body)
    rows = np.full((n, length), pad, np.int64)
    mask = np.zeros((n, length), np.int32)
    offset = 0 if start is None else 1
    if start is not None:
        rows[:, 0], mask[:, 0] = int(start), 1
    for r in range(n):
        chunk = ids[r * body : (r + 1) * body]
        rows[r, offset : offset + len(chunk)] = chunk
        mask[r, offset : offset + len(chunk)] = 1
    return rows, mask
