"""The help layout of every nnjit command (``nnjit``'s subcommands and the benchmarks' own
parsers): one formatter, so that each option's default is shown the same way everywhere."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring's layout kept, and every option's default shown: "off" for
    flags, "none" where there is none, lists as typed (784,128,10); not where the help
    text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "(default" in text:
            return text
        if action.nargs == 0:       # a flag
            return text if action.const is False else text + " (default: off)"
        d = action.default
        if d is None or d == []:
            return text + " (default: none)"
        if isinstance(d, (list, tuple)):
            return text + " (default: " + ",".join(map(str, d)) + ")"
        return text + " (default: %(default)s)"
