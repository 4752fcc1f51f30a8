"""npu_serve_kernels: device kernels for npu-serve, one sub-package per op.

Installed from the repository's `kernels/` folder under this name (see pyproject.toml): the name
`kernels` belongs to a PyPI package that transformers imports when present. Each op folder holds its
torch reference (`reference.py`, importable anywhere) and its device kernels (`triton_kernels.py`,
which needs `triton`; import it only where a kernel will run). Inventory: kernels/README.md.
"""
