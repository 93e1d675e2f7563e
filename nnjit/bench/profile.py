"""Where a run's time goes, down to the instruction: a sampling profile of Numba's compiled
code with Linux perf.

    python -m nnjit.bench.profile [--top N] [--freq HZ] [--gap B] -- script.py [args ...]

Why: Numba's machine code lives in anonymous pages with no symbols, so ``perf report`` shows
bare addresses and cProfile sees one opaque call. Here ``perf record`` samples the script's
process with the software event cpu-clock (it works where a virtual machine exposes no
hardware counters, as on the project's KVM guest), and the script's process, as it exits,
copies its anonymous executable pages into a folder. Samples that fall in those pages are
grouped into ranges of code (a range ends where the next sampled instruction is more than B
bytes on, default 64: a hot loop is one range), the hottest ranges disassembled (objdump)
with each instruction's own count beside it; the other samples by symbol and shared object
(Python, NumPy's BLAS, the kernel). A sample lands on the instruction that was waiting, so a
long-latency instruction (a division, a load that misses) shows its count on the next one.

Needs ``perf`` (Debian: linux-perf) and, for the disassembly, ``objdump`` (binutils); each
missing one is named in a clear error (or, objdump, a note). The timing is the script's own:
warm the kernels up in it (or run it once before) so that compiling is not what is profiled.
"""
import argparse
import bisect
import os
import platform
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

_OBJDUMP_ARCH = {"x86_64": "i386:x86-64", "AMD64": "i386:x86-64", "aarch64": "aarch64"}


class ProfileError(RuntimeError):
    """perf is missing or cannot sample here."""


def dump_code(folder):
    """Copy this process's anonymous executable mappings (JIT code) into folder, one file a
    mapping named by its start address in hex."""
    import ctypes
    os.makedirs(folder, exist_ok=True)
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:         # not Linux: perf is not there either
        return
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 or "x" not in parts[1]:     # a file's pages, [vdso], or no code
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        try:
            data = ctypes.string_at(lo, hi - lo)
        except (OSError, ValueError):
            continue
        with open(os.path.join(folder, f"{lo:x}.bin"), "wb") as out:
            out.write(data)


def load_regions(folder):
    """[(start, bytes)] of the mappings dump_code wrote, sorted by start."""
    regions = []
    for name in os.listdir(folder):
        if name.endswith(".bin"):
            with open(os.path.join(folder, name), "rb") as f:
                regions.append((int(name[:-4], 16), f.read()))
    return sorted(regions)


_LINE = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def parse_samples(text):
    """(ip, symbol, shared object) of each line of ``perf script -F ip,sym,dso``."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def attribute(samples, regions):
    """Split samples into JIT code (a Counter of instruction addresses) and the rest (a
    Counter of 'symbol (shared object's file name)')."""
    starts = [r[0] for r in regions]
    ips, other = Counter(), Counter()
    for ip, sym, dso in samples:
        k = bisect.bisect_right(starts, ip) - 1
        if k >= 0 and ip < starts[k] + len(regions[k][1]):
            ips[ip] += 1
        else:
            other[f"{sym} ({os.path.basename(dso)})"] += 1
    return ips, other


def hot_ranges(ips, gap=64):
    """The sampled instructions clustered into ranges of code: a range ends where the next
    sampled address is more than gap bytes on. [(first, last, samples)], most samples first.
    Sampled addresses are instruction boundaries, so each range disassembles cleanly from
    its first."""
    ranges = []
    for ip in sorted(ips):
        if ranges and ip - ranges[-1][1] <= gap:
            first, _, n = ranges[-1]
            ranges[-1] = (first, ip, n + ips[ip])
        else:
            ranges.append((ip, ip, ips[ip]))
    return sorted(ranges, key=lambda r: -r[2])


def disassemble(regions, lo, hi, ips):
    """objdump's lines for the code in [lo, hi), each with its own sample count; None where
    objdump or this machine's architecture name is missing."""
    arch = _OBJDUMP_ARCH.get(platform.machine())
    objdump = shutil.which("objdump")
    if arch is None or objdump is None:
        return None
    start = next(s for s, data in regions if s <= lo < s + len(data))
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(dict(regions)[start])
        f.flush()
        r = subprocess.run([objdump, "-D", "-b", "binary", "-m", arch,
                            f"--start-address={lo}", f"--stop-address={hi}",
                            f"--adjust-vma={start}", f.name], capture_output=True, text=True)
    lines, cold = [], []
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s*(?:[0-9a-f]{2} )+\s*(.*)$", line)
        if m and m.group(2).strip():
            a = int(m.group(1), 16)
            text = f"{ips.get(a, 0):7d}  {a:x}  {m.group(2).strip()}"
            if ips.get(a, 0):
                lines += cold if len(cold) <= 4 else [
                    cold[0], f"{'':7s}  ... {len(cold) - 2} instructions without samples",
                    cold[-1]]
                cold = []
                lines.append(text)
            else:
                cold.append(text)
    return lines + cold[:4]


def report(samples, regions, top=8, gap=64):
    """The profile as text: totals, the hottest ranges of JIT code disassembled, the top
    symbols elsewhere."""
    ips, other = attribute(samples, regions)
    total = len(samples)
    jit = sum(ips.values())
    if total == 0:
        return "no samples (did the script run long enough?)"
    out = [f"{total} samples: {100 * jit / total:.1f} % in compiled (JIT) code, "
           f"{100 * (total - jit) / total:.1f} % elsewhere"]
    for first, last, n in hot_ranges(ips, gap)[:top]:
        out.append(f"\n-- JIT code {first:x}..{last:x}: {n} samples, {100 * n / total:.1f} % "
                   f"of all ({100 * n / jit:.1f} % of JIT); samples  address  instruction")
        lines = disassemble(regions, first, last + 1, ips)
        out += lines if lines is not None else ["   (no objdump for this machine: "
                                                "addresses only)"]
    out.append("\n-- elsewhere, by symbol")
    for name, n in other.most_common(top):
        out.append(f"{n:7d}  {100 * n / total:5.1f} %  {name}")
    return "\n".join(out)


def _child(folder, argv):
    """Run the script as __main__ with its arguments, then dump the JIT code (also when the
    script raises SystemExit)."""
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        dump_code(folder)


def profile(argv, freq=2000, top=8, gap=64):
    """Run ``python argv...`` under perf and return the report (see the module docstring)."""
    perf = shutil.which("perf")
    if perf is None:
        raise ProfileError("perf is not installed (Debian/Ubuntu: apt install linux-perf, "
                           "or linux-tools-$(uname -r))")
    with tempfile.TemporaryDirectory() as tmp:
        data, folder = os.path.join(tmp, "perf.data"), os.path.join(tmp, "code")
        r = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-F", str(freq), "-o",
                            data, "--", sys.executable, "-m", "nnjit.bench.profile", "--child",
                            folder, "--", *argv])
        if r.returncode != 0 or not os.path.exists(data):
            raise ProfileError(f"perf record failed (exit {r.returncode}); perf may not be "
                               "allowed here (see /proc/sys/kernel/perf_event_paranoid)")
        s = subprocess.run([perf, "script", "-i", data, "-F", "ip,sym,dso"],
                           capture_output=True, text=True)
        if s.returncode != 0:
            raise ProfileError("perf script failed: " + s.stderr.strip()[-500:])
        regions = load_regions(folder) if os.path.isdir(folder) else []
        return report(parse_samples(s.stdout), regions, top, gap)


def main(args=None):
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["--child"]:
        _child(args[1], args[3:])
        return 0
    p = argparse.ArgumentParser(prog="python -m nnjit.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top", type=int, default=8, help="ranges of JIT code and symbols shown")
    p.add_argument("--freq", type=int, default=2000, help="samples a second")
    p.add_argument("--gap", type=int, default=64,
                   help="bytes between sampled instructions that end a range of code")
    p.add_argument("script", nargs=argparse.REMAINDER, help="-- script.py [args ...]")
    a = p.parse_args(args)
    argv = a.script[1:] if a.script[:1] == ["--"] else a.script
    if not argv:
        p.error("name a script to profile: python -m nnjit.bench.profile -- script.py")
    if a.gap <= 0 or a.freq <= 0 or a.top <= 0:
        p.error("--top, --freq and --gap must be positive")
    try:
        print(profile(argv, a.freq, a.top, a.gap))
    except ProfileError as e:
        print(f"nnjit.bench.profile: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
