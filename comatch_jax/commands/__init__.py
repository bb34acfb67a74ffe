"""Commands that use a finished run: predict, probe, request_labels, analyze, answer_from_truth."""

import sys

from absl import flags


def help_for_console_script(module: str) -> None:
    """Makes --help show `module`'s docstring and flags when it runs as a console script:
    absl shows those of __main__ and sys.argv[0], which is then the script pip wrote."""
    sys.modules["__main__"].__doc__ = sys.modules[module].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
