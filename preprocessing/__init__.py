"""Preprocessing (PyTorch + Apache Beam): audio -> separated stems -> clips -> EnCodec token shards.

Importing this package never imports jax.
"""
