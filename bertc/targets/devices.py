"""target.device (cpu | gpu | auto) -> a TensorFlow device string, or a clear error when there is no GPU."""

from __future__ import annotations

import tensorflow as tf

from bertc.errors import ConfigError


def resolve_device(device: str) -> str | None:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        return "/device:CPU:0"
    if device == "gpu":
        if not gpus:
            raise ConfigError(
                "target.device=gpu, but TensorFlow sees no GPU. Install the CUDA build "
                "(pip install 'tensorflow[and-cuda]') on a machine with an NVIDIA GPU, or use target.device=cpu."
            )
        return "/device:GPU:0"
    return "/device:GPU:0" if gpus else "/device:CPU:0"
