"""The `picsift` console entry point: every engine command, plus `gui` for the window."""

from __future__ import annotations

import sys


def _gui(session) -> int:
    from app.main import run_gui

    return run_gui(session.args)


def main(argv: list[str] | None = None) -> int:
    from engine import cli

    return cli.main(argv, extra_commands={"gui": _gui})


if __name__ == "__main__":
    sys.exit(main())
