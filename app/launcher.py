"""The `picsift` console entry point: every engine command, plus `gui` for the window."""

from __future__ import annotations

import sys


def _gui(session) -> int:
    from picsift.main import run_gui

    return run_gui(session.args)


def main(argv: list[str] | None = None) -> int:
    from picsift.engine import cli

    from picsift.desktop_entry import command as desktop_entry

    return cli.main(argv, extra_commands={"gui": _gui, "install-desktop-entry": desktop_entry})


if __name__ == "__main__":
    sys.exit(main())
