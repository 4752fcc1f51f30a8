"""Linear layers: a bf16 matrix-vector kernel for decode-sized batches on CPU (`cpu.py`)."""
