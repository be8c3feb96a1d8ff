"""gist-mining: offline guide-model mining of hard negatives and false-negative masks, and a GISTEmbed trainer."""

import os

__version__ = "0.1.0"


def openblas_kernel(flags: set[str]) -> str | None:
    """The OpenBLAS kernel for a CPU with these /proc/cpuinfo flags: SkylakeX needs all five AVX-512 sets it uses."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "SkylakeX"
    return "Haswell" if {"avx2", "fma"} <= flags else None


def cpu_flags() -> set[str]:
    """The CPU's instruction sets as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    except OSError:
        return set()


def _name_openblas_kernel() -> None:
    """faiss-cpu's wheel bundles OpenBLAS 0.3.15, which picks its matrix kernels by CPU model and falls back to a
    generic one on models it does not know (a virtual machine's plain "Intel Xeon Processor"): FAISS's exact
    search then runs 2.4-4.2x slower (benchmarks/index_recall.py). OpenBLAS reads OPENBLAS_CORETYPE when it loads,
    so the kernel is named here, before faiss is imported, unless the user has. numpy's OpenBLAS, if numpy is
    imported after this, and child processes read it too; they would pick the same kernel on a CPU they know."""
    kernel = openblas_kernel(cpu_flags())
    if kernel and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = kernel


_name_openblas_kernel()
