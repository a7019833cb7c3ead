"""Peak resident memory of the current process, for the benchmarks (imported by the scripts next to it)."""


def peak_rss_bytes() -> int:
    """VmHWM from /proc/self/status. Not ru_maxrss: Linux carries a parent's ru_maxrss across fork and exec."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
