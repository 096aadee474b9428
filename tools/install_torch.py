"""Install a CPU build of torch on machines without an NVIDIA GPU, a normal build otherwise.

Plain `pip install torch` on Linux pulls several GB of CUDA packages; on a CPU-only machine we ask for
the `+cpu` build instead (from a local wheel cache if pip is configured with one, else PyTorch's CPU index).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

CPU_VERSION = "2.13.0"


def pip(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", *args])


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        import torch

        print(f"torch {torch.__version__} already installed")
        return 0
    if shutil.which("nvidia-smi"):
        return pip("torch")
    if pip(f"torch=={CPU_VERSION}+cpu") == 0:
        return 0
    return pip("torch", "--index-url", "https://download.pytorch.org/whl/cpu")


if __name__ == "__main__":
    sys.exit(main())
