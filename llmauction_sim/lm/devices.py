"""Which device and dtype a model runs on, and what this CPU can do.

`python -m llmauction_sim.lm.devices` prints the CPU, its SIMD flags and the dtype `auto` picks, so
a log says which code path ran (`.ci/run` prints it first).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

# Flags that decide a code path: float32 kernels (avx2/avx512f) or native bf16 (avx512_bf16, amx).
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16",
              "amx_tile")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_supports_bf16() -> bool:
    """bf16 is fast only with native instructions; emulated bf16 is ~100x slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU and on CPUs with native bf16 (faster there: docs/performance.md),
    float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of `SIMD_FLAGS` it has (from /proc/cpuinfo where there is
    one)."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and name:
                break
    return name, [f for f in SIMD_FLAGS if f in flags]


def cpu_description() -> str:
    name, flags = cpu_model_and_flags()
    return f"{name} [{' '.join(flags) or 'no AVX2/AVX-512'}]"


def main() -> None:
    auto = resolve_dtype("auto", resolve_device("auto"))
    print(f"cpu: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_supports_bf16()}, cuda: {torch.cuda.is_available()}")
    print(f"dtype=auto -> {str(auto).removeprefix('torch.')}")


if __name__ == "__main__":
    main()
