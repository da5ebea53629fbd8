"""prunecli's subclass of DeBERTaV3's RelativeEmbedding (the relative-position table every encoder block
of a DebertaV3Backbone reads), used where the backbone is opened into its task's graph (rebuild.opened)."""

from __future__ import annotations

from typing import Any

_CLASSES: dict[str, Any] = {}


def built_relative_embedding():
    """Define and register (once) `prunecli>BuiltRelativeEmbedding`; None without keras-hub.

    KerasHub's RelativeEmbedding builds its LayerNormalization only when called. A functional model
    deserialised from its config builds such a layer from its shape (Keras' default build) without
    calling it, so the table's normalization had no weights: an opened DeBERTaV3 lost 2 weights when
    rebuilt ("set_weights ... expecting 24 weights") and its saved file did not load. This class builds
    it in `build`."""
    if "RelativeEmbedding" in _CLASSES:
        return _CLASSES["RelativeEmbedding"]
    try:
        import keras
        from keras_hub.src.models.deberta_v3.relative_embedding import RelativeEmbedding
    except ImportError:
        return None

    @keras.saving.register_keras_serializable(package="prunecli")
    class BuiltRelativeEmbedding(RelativeEmbedding):
        """DeBERTaV3's RelativeEmbedding whose `build` builds its LayerNormalization."""

        def build(self, input_shape=None):
            self.layer_norm.build((1, self.bucket_size * 2, self.hidden_dim))
            self.built = True

    _CLASSES["RelativeEmbedding"] = BuiltRelativeEmbedding
    return BuiltRelativeEmbedding
