import ctypes
import subprocess
import sys

import pytest

BLOCK = 256 << 20  # above glibc's largest default mmap threshold (32 MiB)

# Touch some blocks, free them and allocate them again: the page faults of touching them again are printed.
SECOND_TOUCH_FAULTS = f"""
import ctypes, resource, sys
from pvera_bench.models.runtime import reuse_freed_host_memory
if sys.argv[1] == "raised":
    reuse_freed_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    blocks = [libc.malloc({BLOCK}) for _ in range(int(sys.argv[2]))]
    for block in blocks:
        ctypes.memset(block, 1, {BLOCK})
    return blocks
for block in touch():
    libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_touch_faults(mode: str, blocks: int) -> int:
    command = [sys.executable, "-c", SECOND_TOUCH_FAULTS, mode, str(blocks)]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def test_freed_host_memory_is_reused_without_page_faults_once_the_thresholds_are_raised():
    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc: reuse_freed_host_memory does nothing here")
    pages = BLOCK // 4096
    assert second_touch_faults("default", 1) > pages // 2  # glibc's default: a fresh mapping, every page faults
    assert second_touch_faults("raised", 10) < pages // 100  # 2.5 GiB freed at once: more than a C int threshold
