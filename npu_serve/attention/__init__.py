"""Attention backends: the contract (backend.py), the transformers bridge and one file per device."""
