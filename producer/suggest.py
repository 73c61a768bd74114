"""An argument parser that answers a mistyped subcommand with "did you mean …?".

Python 3.11's argparse has no ``suggest_on_error`` (3.14 does): a typo printed nine lines of
usage and no hint. The closest choices come from difflib, as 3.14 does it.
"""

from __future__ import annotations

import argparse
import difflib
import re

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<typed>[^']*)' \(choose from (?P<choices>.*)\)")


class SuggestingParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose invalid-choice error is one line with the nearest choice."""

    def error(self, message: str):
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match["choices"])
            close = difflib.get_close_matches(match["typed"], choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; choose from {', '.join(choices)}"
            self.exit(2, f"{self.prog}: error: unknown {_what(message)} '{match['typed']}'{hint} "
                         f"({self.prog} --help lists them)\n")
        super().error(message)


def _what(message: str) -> str:
    return "command" if message.startswith("argument command") or "_command" in message.split(":")[0] \
        else "choice"
