"""A portable (target=stablehlo) artifact -> probabilities and logits with no TensorFlow: format, runtime, CLI."""
