"""Build-on-first-use for our C++ CPU kernels (torch.utils.cpp_extension.load), shared by every op.

Each extension is compiled lazily the first time it is asked for and cached in torch's extension dir
(`TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`), so later processes only load the .so.
It is built with `-march=native`; the module name carries a hash of this CPU's feature flags so that
a cache dir shared between different machines never hands one a binary with instructions it lacks.
`available()` never raises: a failed build (no compiler, no headers) is logged once and reported as
False, and the caller keeps its torch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading

logger = logging.getLogger(__name__)

# IEEE semantics on purpose: no -ffast-math (the kernels are written so that GCC vectorises anyway).
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]


def cpu_flags_line() -> str:
    """/proc/cpuinfo's first feature-flags line ("flags" on x86, "Features" on Arm), or "" if none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """This CPU's feature flags, as the kernel probes name them (avx512_bf16, amx_bf16, ...)."""
    line = cpu_flags_line()
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def cpu_tag() -> str:
    """Short hash of the CPU's feature flags (and the machine type), part of the module name."""
    return hashlib.sha1((platform.machine() + cpu_flags_line()).encode()).hexdigest()[:10]


def _ensure_ninja_on_path() -> None:
    """torch's `load` runs `ninja` from PATH. Put the pip `ninja` package's binary (our dependency)
    first: it sits in the venv's bin dir, which is not on PATH when the venv's python is run without
    activating it, and a system ninja of another version must not be used in its place. Ninja 1.11
    (Debian's) and 1.13 (pip's) hash build commands differently in .ninja_log, so processes that
    alternate between them (an activated shell, then a test runner) each found the other's log
    stale and rebuilt the kernels, 45-90 s every time on a 2-core box."""
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return
    ours = os.path.join(ninja.BIN_DIR, "ninja")
    found = shutil.which("ninja")
    if not os.path.exists(ours) or (found is not None and os.path.realpath(found) == os.path.realpath(ours)):
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


class CpuExtension:
    """One C++ source file built into one extension module, on first use, at most once per process.

    `depends`: headers the source includes. torch's loader decides whether to rebuild from the source
    file alone, so their contents are hashed into the module name: an edited header is a new module."""

    def __init__(self, name: str, source: str, what: str, depends: tuple[str, ...] = ()):
        self.name, self.source, self.what = name, source, what
        self.depends = depends
        self._lock = threading.Lock()
        self._module = None
        self.failed: str | None = None

    def load(self):
        """The compiled module; builds it on first call. Raises RuntimeError on build failure."""
        with self._lock:
            if self._module is not None:
                return self._module
            if self.failed is not None:
                raise RuntimeError(self.failed)
            try:
                from torch.utils.cpp_extension import load

                _ensure_ninja_on_path()
                self._module = load(name=self._module_name(), sources=[self.source], extra_cflags=CFLAGS,
                                    extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # any build/load failure means "use the torch path"
                self.failed = f"{self.what} unavailable: {type(exc).__name__}: {exc}"
                raise RuntimeError(self.failed) from exc
            return self._module

    def _module_name(self) -> str:
        name = f"{self.name}_{cpu_tag()}"
        if self.depends:
            digest = hashlib.sha1()
            for path in self.depends:
                with open(path, "rb") as f:
                    digest.update(f.read())
            name += "_" + digest.hexdigest()[:8]
        return name

    def available(self) -> bool:
        """True when the module is built (building it now if needed). Logs a warning once on failure."""
        if self._module is not None:
            return True
        if self.failed is not None:
            return False
        try:
            self.load()
            return True
        except RuntimeError:
            logger.warning("%s; falling back to the torch path", self.failed)
            return False
