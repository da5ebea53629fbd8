"""Other pruning back ends behind the same config and report. The native engine is `pipeline.py`;
`tfmot` runs TensorFlow Model Optimization's prune_low_magnitude on Keras-2 models, so the two can
be compared on the same file with the same options."""
