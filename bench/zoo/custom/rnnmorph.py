"""Custom objects for rnnmorph's Russian tagger (rnnmorph 0.4.1), for
`prunecli ... --custom-objects bench/zoo/custom/rnnmorph.py`.

rnnmorph/model.py builds its first bidirectional layer by hand: an LSTM beside a `ReversedLSTM`, an LSTM
subclass that reads the sequence backwards (`go_backwards=True`) and reverses its output sequence again
(Keras 2's `K.reverse(y, 1)`), so that both halves are aligned per word before the Concatenate. The same
layer in Keras 3 operations, under the name the file stores.
"""

import keras
from keras import ops


class ReversedLSTM(keras.layers.LSTM):
    """An LSTM run from the last step to the first, its output sequence put back in reading order."""

    def __init__(self, units, **kwargs):
        kwargs["go_backwards"] = True
        super().__init__(units, **kwargs)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        return ops.flip(super().call(sequences, initial_state=initial_state, mask=mask, training=training), axis=1)
