"""What a measured number ran on: CPU model (``lscpu``), native bf16, threads, GPU, versions."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def machine_info() -> dict:
    """CPU model, native bf16 (AVX512-BF16 or AMX) or not, cores, torch threads, load, GPU, versions."""
    from rrec.backbone import cpu_has_fast_bf16

    cpu = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        pass
    import transformers

    return {
        "cpu": cpu,
        "native_bf16": cpu_has_fast_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
