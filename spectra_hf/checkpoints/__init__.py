"""Checkpoints on disk: safetensors I/O, the suite directory layout, conversion between formats, GGUF, `info`."""
