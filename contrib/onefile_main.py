"""The entry point PyInstaller freezes into dist/llamagate (contrib/build-onefile.sh): `llamagate` itself."""

from proxy.cli.entry import main

main()
