"""Custom objects for big-phoney 1.0.1's grapheme-to-phoneme model (built by bench/zoo/fetch.py's
assemble_bigphoney as big_phoney/prediction_model.py builds it), for
`prunecli ... --custom-objects bench/zoo/custom/bigphoney.py`.

Its attention's one Lambda layer (lambda_1, called once per decoder step) is `lambda x: softmax(x, axis=1)`:
the attention scores (batch x 20 characters x 1) turned into weights over the characters.
"""

import keras


def attention_softmax(x):
    """Softmax over axis 1, the characters (Keras 2's keras.activations.softmax(x, axis=1))."""
    return keras.ops.softmax(x, axis=1)


LAMBDA_LAYERS = {"lambda_1": attention_softmax}
