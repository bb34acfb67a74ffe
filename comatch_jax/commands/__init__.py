"""Commands that use a finished run: predict, probe, request_labels, analyze, answer_from_truth."""

import sys
from typing import Any, Callable, Sequence

from absl import flags

from comatch_jax import cli


def run(module: str, work: Callable[..., Any], required: Sequence[str]) -> None:
    """Runs a command whose flags `module` has just defined: `work(flag=value, ...)` does it,
    through cli's entry point (one `error:` line for bad input). --help shows the module's
    docstring and flags also as a console script, where absl would show those of
    sys.argv[0], the script pip wrote."""
    flags.mark_flags_as_required(required)
    sys.modules["__main__"].__doc__ = sys.modules[module].__doc__
    defined = flags.FLAGS.get_key_flags_for_module(module)
    for flag in defined:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    cli.run(cli.entry_point(lambda: work(**{flag.name: flag.value for flag in defined})))
