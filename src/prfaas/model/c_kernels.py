"""Small C kernels built at first use: the one place that compiles, caches and loads them.

A kernel is C source compiled with the system C compiler (``$CC``, else ``cc``) for this
CPU (``-march=native``) into ``<prfaas cache dir>/kernels/<name>-<key>.so``, where the key
hashes the source, the flags, the compiler and the CPU's feature flags: a changed kernel,
compiler or machine builds anew, an unchanged one loads the file. Loaded with ctypes, whose
calls release the GIL. Without a compiler, or when the build fails, ``build`` is None and
the caller runs its reference path.

Kernel sources start with ``PRELUDE``: the 16-float vector type (a gcc/clang vector
extension, so the compiler picks the instructions this CPU has) and ``run_jobs``, the
thread split they share: on torch's OpenMP threads where the compiler has OpenMP, else on
POSIX threads of its own.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from prfaas.config import default_cache_dir

logger = logging.getLogger(__name__)

PRELUDE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 16 floats as one vector; loads and stores through v16u need no alignment. */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t v16iu __attribute__((vector_size(64), aligned(4), may_alias));

static inline v16 load16(const float *p) { return *(const v16u *)p; }
static inline v16i load16i(const int32_t *p) { return *(const v16iu *)p; }
static inline void store16(float *p, v16 x) { *(v16u *)p = x; }

/* fn over jobs[0, n), each job_size bytes; returns 1 when any fn returned nonzero.
   Built with OpenMP, the jobs run on the process's OpenMP threads: torch's, which after each
   op spin a while waiting for the next; threads of our own would compete with them for the
   cores (a 2K prefill's attention took 34 ms a layer in the engine instead of 26). Without
   OpenMP: jobs 1.. on POSIX threads of their own, job 0 on this one, then any job whose
   thread did not start. */
#ifdef _OPENMP
static int run_jobs(void *(*fn)(void *), void *jobs, size_t job_size, int64_t n) {
    char *job = (char *)jobs;
    int failed = 0;
    if (n <= 1) return n == 1 && fn(job) != 0;
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : failed)
    for (int64_t i = 0; i < n; i++) failed |= fn(job + i * job_size) != 0;
    return failed;
}
#else
static int run_jobs(void *(*fn)(void *), void *jobs, size_t job_size, int64_t n) {
    enum { MAX_THREADS = 64 };
    pthread_t threads[MAX_THREADS];
    char *job = (char *)jobs;
    int64_t started = 0;
    int failed = 0;
    for (int64_t i = 1; i < n && i < MAX_THREADS; i++) {
        if (pthread_create(&threads[i], 0, fn, job + i * job_size) != 0) break;
        started = i;
    }
    failed |= fn(job) != 0;
    for (int64_t i = 1; i <= started; i++) {
        void *res = 0;
        pthread_join(threads[i], &res);
        failed |= res != 0;
    }
    for (int64_t i = started + 1; i < n; i++) failed |= fn(job + i * job_size) != 0;
    return failed;
}
#endif
"""
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", "-pthread")
# Tried first: libgomp's soname is torch's (torch/lib/libgomp.so.1), and torch is imported
# before any kernel loads, so the dynamic loader binds the kernel to torch's OpenMP runtime.
OPENMP = ("-fopenmp",)


def build(name: str, source: str) -> ctypes.CDLL | None:
    """The library built from ``PRELUDE + source`` (once per source, flags, compiler and CPU),
    or None without a C compiler or when it does not build. Callers cache the result."""
    source = PRELUDE + source
    compiler = shutil.which(os.environ.get("CC", "cc")) if os.name == "posix" else None
    if compiler is None:
        logger.info("no C compiler: %s runs its reference path", name)
        return None
    for flags in (FLAGS + OPENMP, FLAGS):
        key = hashlib.sha256(
            "\0".join([source, *flags, compiler, platform.machine(), _cpu_flags()]).encode()
        ).hexdigest()[:16]
        path = default_cache_dir() / "kernels" / f"{name}-{key}.so"
        try:
            if not path.exists():
                _compile(compiler, name, source, flags, path)
            return ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as exc:
            logger.info("%s kernel not built with %s (%s)", name, " ".join(flags), exc)
    logger.warning("%s kernel not built; its reference path runs", name)
    return None


def _compile(compiler: str, name: str, source: str, flags: tuple[str, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        built = Path(tmp) / path.name
        subprocess.run(
            [compiler, *flags, str(src), "-o", str(built), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, path)  # atomic: a concurrent builder's copy is the same file


def _cpu_flags() -> str:
    """This CPU's feature flags (``-march=native`` builds for them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
