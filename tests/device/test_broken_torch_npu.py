"""`--device cpu` on a box whose torch_npu is installed but broken (CANN not sourced, driver missing).

torch >= 2.5 imports every installed device extension at `import torch` through its "torch.backends"
entry points, as it would the real torch_npu; one that raises breaks `import torch` itself. npu-serve sets
TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch loads (runtime_env), so the CPU path must work with the
variable unset in the environment. Run in fresh interpreters: autoload happens once, at import.
"""

from __future__ import annotations

import os
import subprocess
import sys

BROKEN = 'raise OSError("libascendcl.so: cannot open shared object file: No such file or directory")\n'


def _broken_torch_npu(root) -> dict[str, str]:
    """A torch_npu package that fails on import, registered as a torch device backend, on PYTHONPATH."""
    pkg = root / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(BROKEN + "\ndef _autoload():\n    pass\n")
    dist = root / "torch_npu-2.8.0.post2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.8.0.post2\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    env["PYTHONPATH"] = str(root)
    env["NPU_SERVE_ATTENTION_BACKEND"] = "torch"  # what is tested is the import path, not the CPU kernel
    return env


def test_cpu_serves_with_a_broken_torch_npu_that_torch_would_autoload(tmp_path, tiny_llama_dir):
    env = _broken_torch_npu(tmp_path)
    plain = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode != 0 and "libascendcl.so" in plain.stderr  # the trap is real

    code = (
        "from npu_serve import LLM, SamplingParams\n"
        f"llm = LLM(model={str(tiny_llama_dir)!r}, device='auto', dtype='float32', num_kv_blocks=64)\n"
        "out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))\n"
        "print(llm.facts.device, len(out[0].outputs[0].token_ids))\n"
    )
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stdout.split() == ["cpu", "4"]
    # "auto" skipped the NPU and said why, naming the fix.
    assert "skipping npu" in served.stderr and "set_env.sh" in served.stderr
