"""Hooks into training frameworks: a Lightning callback, a plain-PyTorch monitor, TensorBoard.

Each submodule imports its framework lazily, so `lightning` and `tensorboard` stay optional
extras (`pip install embscope[lightning]`, `embscope[tensorboard]`).
"""
