"""The `llamagate` console script. `llamagate --version` (or `-v`) alone is answered here, before
click and the commands are imported: users and scripts run it to see what is installed, and
importing the command set (click, the HTTP client, the log setup) would triple its time. Anything
else goes to the commands in proxy/cli/main.py."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] in (["--version"], ["-v"]):
        from proxy.cli.version import version_lines

        print("\n".join(version_lines()))
        return
    from proxy.cli.main import main as commands

    commands()
