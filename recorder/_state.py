"""What exact replay needs besides the inputs: RNG state, precision flags, environment."""

from __future__ import annotations

import platform
from typing import Any

import torch

__all__ = ["precision_flags", "environment", "autocast_state", "restore_flags"]


def precision_flags() -> dict[str, Any]:
    """Determinism and TF32/matmul-precision flags that decide which kernels run."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "allow_tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def restore_flags(flags: dict[str, Any]) -> None:
    """Set the recorded precision flags (unknown keys are ignored).

    Only changes are applied: torch's first ``use_deterministic_algorithms`` call imports
    torch._dynamo, seconds per process, even when it changes nothing.
    """
    want = flags.get("deterministic_algorithms")
    if want is not None and bool(want) != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(bool(want), warn_only=True)
    if "cudnn_deterministic" in flags:
        torch.backends.cudnn.deterministic = bool(flags["cudnn_deterministic"])
    if "cudnn_benchmark" in flags:
        torch.backends.cudnn.benchmark = bool(flags["cudnn_benchmark"])
    if "allow_tf32_matmul" in flags:
        torch.backends.cuda.matmul.allow_tf32 = bool(flags["allow_tf32_matmul"])
    if "allow_tf32_cudnn" in flags:
        torch.backends.cudnn.allow_tf32 = bool(flags["allow_tf32_cudnn"])
    if "float32_matmul_precision" in flags:
        torch.set_float32_matmul_precision(str(flags["float32_matmul_precision"]))


def autocast_state() -> dict[str, dict[str, Any]]:
    """Autocast enabled/dtype per device type, as the call saw it."""
    out = {}
    for dev in ("cpu", "cuda"):
        try:
            out[dev] = {
                "enabled": bool(torch.is_autocast_enabled(dev)),
                "dtype": str(torch.get_autocast_dtype(dev)).removeprefix("torch."),
            }
        except (RuntimeError, TypeError, AttributeError):
            continue
    return out


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Library versions, device name and flags, stored in the run event."""
    import numpy

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "flags": precision_flags(),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(device)
        env["capability"] = list(torch.cuda.get_device_capability(device))
    else:
        env["device"] = platform.processor() or platform.machine() or "cpu"
    from ._distributed import distributed_environment  # rank and world size under torchrun

    env.update(distributed_environment())
    return env
