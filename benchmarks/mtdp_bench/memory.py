"""This process's memory as the kernel reports it (``/proc/self``): resident pages, private
pages, anonymous pages (any process's), and the resident high-water mark. No torch here: a probe that imports this module
measures only what it loads itself."""
from __future__ import annotations

import os


def rss_bytes() -> int:
    """This process's resident memory now (shared pages included)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def uss_bytes() -> int:
    """This process's private memory (USS: private clean + dirty pages, from
    ``/proc/self/smaps_rollup``): what it alone holds, without shared libraries or mapped
    object-store pages."""
    kb = 0
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb * 1024


def anon_bytes(pid: int | str = "self") -> int:
    """A process's resident anonymous memory (``RssAnon``: its heaps, no file or shared-memory
    pages, so no mapped object-store pages either); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_rss_peak() -> bool:
    """Reset the kernel's per-process RSS high-water mark (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    """The RSS high-water mark (``VmHWM``) since the last :func:`reset_rss_peak`."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")
