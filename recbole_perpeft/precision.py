"""Mixed precision: one config key, ``mixed_precision``, for training and catalogue encoding.

``auto`` (default): bf16 on CUDA where the GPU supports it (else fp16), off on CPU; ``bf16``,
``fp16`` or ``no`` force a choice (bf16 works on CPUs too, and pays where the CPU has bf16
matrix units). Weights stay float32 (the master copy the optimiser updates); autocast runs the
foundation model and the backbone in the lower precision, and fp16 losses are scaled
(:class:`torch.amp.GradScaler`) so small gradients do not underflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from recbole_perpeft.errors import ConfigError

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


def check_mixed_precision(value: object) -> str:
    """``value`` as one of :data:`MIXED_PRECISION`, or a one-line :class:`ConfigError`."""
    if value is None:
        return "auto"
    if value is False:  # YAML reads an unquoted `no` as false
        return "no"
    if not isinstance(value, str) or value.lower() not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {value!r}")
    return value.lower()


def resolve_mixed_precision(value: object, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that ``mixed_precision: value`` means on ``device`` (``None``: off)."""
    value = check_mixed_precision(value)
    if value == "auto":
        if torch.device(device).type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[value]


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op when ``dtype`` is ``None``.

    On a CPU, attention runs PyTorch's math kernel: its fused CPU kernel's bf16 backward was ~3x
    slower than the math one here (tiny CLIP: a bf16 step took 3.6 s against 1.3 s in fp32; with
    the math kernel 1.3 s; MiniLM 2x faster than fp32 either way).
    """
    if dtype is None:
        yield
        return
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        if device_type == "cpu":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
        yield
