"""Sampling on CPU: greedy argmax over a step's logits rows (`cpu.py`)."""
