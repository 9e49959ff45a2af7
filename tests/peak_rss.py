"""Run an entry-point script in a child Python and return its own peak resident memory.

Neither RUSAGE_CHILDREN (the largest of every child this test session has waited for) nor the child's RUSAGE_SELF
works: Linux carries the RSS high-water mark of the process image replaced by exec into ru_maxrss, and the child
starts as a copy of the pytest process, which is well over a gigabyte late in a full run. VmHWM in /proc/self/status
belongs to the new address space only, so the child reads that at exit (ru_maxrss where /proc does not exist).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = """
import atexit, resource, runpy, sys
def _peak_kb():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
atexit.register(lambda: open({peak!r}, 'w').write(str(_peak_kb())))
sys.path.insert(0, {folder!r})  # as `python script.py` puts the script's folder first
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name='__main__')
"""


def run_with_peak_rss(script: Path, args: list[str], cwd: Path, env: dict[str, str], peak_file: Path,
                      timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """(the finished `python script args...` run in `cwd`, its peak RSS in KiB). `peak_file` must lie outside `cwd`
    when the test checks that the command wrote nothing there."""
    code = _PROBE.format(peak=str(peak_file), folder=str(script.parent), script=str(script), args=list(args))
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, int(peak_file.read_text()) if peak_file.is_file() else -1
