"""engine/ is torch-free and never reaches into worker/: every engine module imports in a fresh
interpreter where `import torch` fails, and no engine module names torch or npu_serve.worker, even
inside a function (the one link to the torch side is npu_serve.loader, see async_engine.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "npu_serve" / "engine"
MODULES = sorted(f"npu_serve.engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__")


def test_every_engine_module_imports_with_torch_blocked():
    assert len(MODULES) >= 10, MODULES
    code = (
        "import sys, importlib\n"
        "for name in ('torch', 'transformers', 'numpy'):\n"
        "    sys.modules[name] = None  # any import of them raises ImportError\n"
        f"for m in {MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        "import npu_serve.config, npu_serve.distributed.topology\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k, v in sys.modules.items() if v is not None)\n"
        "print('ok', len(sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


def test_the_blocked_import_would_catch_a_torch_import():
    # The check above must be able to fail: the worker side does import torch.
    code = "import sys\nsys.modules['torch'] = None\nimport npu_serve.worker.sampler\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch" in proc.stderr


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_engine_module_imports_torch_or_the_worker_even_lazily():
    for path in ENGINE.glob("*.py"):
        for name in _imported_names(path):
            assert not (name == "torch" or name.startswith("torch.")), f"{path.name} imports {name}"
            assert not name.startswith("npu_serve.worker"), f"{path.name} imports {name}"
            assert not name.startswith("npu_serve.distributed"), f"{path.name} imports {name}"
