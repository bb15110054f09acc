"""How long `sluice --help` takes to start: this checkout against another git ref, in the same run.

    .venv/bin/python benchmarks/cli_startup.py [--against main] [--runs 11] [-- ARGS ...]   (e.g. -- models --help)

Both trees are run by this venv's Python through the same launcher (the console script's two lines), alternating,
so the only difference is the code: the ref is exported with `git archive` into a temporary folder laid out as the
installed package (core/, events/, ... as sluice.core, sluice.events, ...). The installed `.venv/bin/sluice` of this
checkout is timed too, as a user runs it. Prints the medians, the ratio and the machine's load average.
Goal: under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("core", "events", "handlers", "infra")
# The console script, with the package taken from sys.path[0] instead of the editable install's finder.
LAUNCHER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                    and "editable" not in type(f).__module__]
sys.path.insert(0, sys.argv.pop(1))
from sluice.cli import main
sys.argv[0] = "sluice"
sys.exit(main())
"""


def layout(source: Path, into: Path) -> Path:
    """A folder where `import sluice` finds `source`'s code, laid out as installed."""
    pkg = into / "sluice"
    pkg.mkdir(parents=True)
    for entry in (source / "sluice").iterdir():
        (pkg / entry.name).symlink_to(entry.resolve())
    for name in SUBPACKAGES:
        if not (pkg / name).exists():  # trees since the committed symlinks (sluice/core -> ../core) have them
            (pkg / name).symlink_to((source / name).resolve())
    return into


def export(ref: str, into: Path) -> Path:
    """`ref`'s tree, from git, without touching any worktree."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "sluice", *SUBPACKAGES],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def seconds(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run: CPU is the steadier figure on a loaded machine."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="The git ref to compare with (default: main).")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("args", nargs="*", default=["--help"], help="The command's arguments (default: --help).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old = layout(export(args.against, Path(tmp) / "src"), Path(tmp) / "old")
        new = layout(ROOT, Path(tmp) / "new")
        commands = {
            f"{args.against}": [sys.executable, "-c", LAUNCHER, str(old), *args.args],
            "this checkout": [sys.executable, "-c", LAUNCHER, str(new), *args.args],
            "this checkout, .venv/bin/sluice": [str(Path(sys.executable).parent / "sluice"), *args.args],
            "python -c pass (the floor)": [sys.executable, "-c", "pass"],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for cmd in commands.values():
            seconds(cmd)  # warm the file cache, write the bytecode
        for _ in range(args.runs):
            for name, cmd in commands.items():
                wall, cpu = seconds(cmd)
                walls[name].append(wall)
                cpus[name].append(cpu)
    base, base_cpu = statistics.median(walls[args.against]), statistics.median(cpus[args.against])
    print(f"`sluice {' '.join(args.args)}`: median of {args.runs} runs, alternating")
    print(f"  {'':<34} {'wall s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6}   wall min..max")
    for name in commands:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"  {name:<34} {w:7.3f} {base / w:5.1f}x {c:7.3f} {base_cpu / c:5.1f}x   "
              f"{min(walls[name]):.3f}..{max(walls[name]):.3f}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
