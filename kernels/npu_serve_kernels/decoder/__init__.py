"""Decoder layers on CPU: a Llama-shaped layer's non-attention work in C++ (`cpu.py`)."""
