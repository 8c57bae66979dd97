"""The serving signature bertc reads and writes: input and output names (no TensorFlow, no NumPy)."""

SERVING_INPUTS = ("input_ids", "input_mask", "segment_ids")
# run_classifier's serving signature also takes these; the prediction never reads them.
TRAINING_INPUTS = ("label_ids", "is_real_example")
SERVING_OUTPUTS = ("probabilities", "logits")
