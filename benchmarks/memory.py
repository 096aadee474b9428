"""Peak resident memory of this process (Linux /proc), shared by the benchmark runner and the TL worker."""

from __future__ import annotations


def status(key: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM, ...) in bytes; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_reset() -> int:
    """Reset the peak-RSS mark (Linux) and return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return status("VmRSS")


def peak_since(base: int) -> int:
    """Peak RSS above `base` since the last reset, in bytes."""
    return max(0, status("VmHWM") - base)
