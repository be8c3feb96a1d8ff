"""gist-mining: offline guide-model mining of hard negatives and false-negative masks, and a GISTEmbed trainer."""

import os

__version__ = "0.1.0"


def _name_openblas_kernel() -> None:
    """faiss-cpu's wheel bundles OpenBLAS 0.3.15, which picks its matrix kernels by CPU model and falls back to a
    generic one on models it does not know (a virtual machine's plain "Intel Xeon Processor"): FAISS's exact
    search then runs 3.1x slower (benchmarks/index_recall.py). OpenBLAS reads OPENBLAS_CORETYPE when it loads,
    so the kernel is named here from the CPU's instruction sets, before faiss is imported, unless the user has."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    except OSError:  # not Linux: OpenBLAS's own choice stands
        return
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_name_openblas_kernel()
