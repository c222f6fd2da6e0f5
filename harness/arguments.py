"""The argument parser every `d2o-bench` subcommand uses, kept apart from the command line
(`harness/cli.py`) that dispatches to them, so no subcommand imports its dispatcher."""

from __future__ import annotations

import argparse

from harness.errors import BadInput


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus the error over several lines; we promise one line."""

    def error(self, message: str):
        # The caller prints "<prog>: error: "; naming the program again would say it twice.
        raise BadInput(f"{message} (see {self.prog} --help)")
