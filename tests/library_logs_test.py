"""The default log filter: comatch_jax's own INFO lines, everyone's warnings and errors, but
not the libraries' INFO lines, repeated notes or tracebacks of a Ctrl-C."""

import logging
import os
import sys

from comatch_jax import library_logs


def _record(pathname, level, message="m", exc_info=None):
    return logging.LogRecord("x", level, pathname, 1, message, (), exc_info)


def _exc_info(error):
    try:
        raise error
    except BaseException:
        return sys.exc_info()


OWN = os.path.join(os.path.dirname(library_logs.__file__), "train.py")
LIBRARY = "/site-packages/orbax/checkpoint/checkpoint_manager.py"


def test_own_info_passes_library_info_does_not():
    keep = library_logs.OwnInfoOnly().filter
    assert keep(_record(OWN, logging.INFO)) and not keep(_record(LIBRARY, logging.INFO))
    assert keep(_record(LIBRARY, logging.WARNING)) and keep(_record(LIBRARY, logging.ERROR))
    assert not keep(_record(LIBRARY, logging.WARNING, "Reached preemption sync point, 3"))


def test_a_library_traceback_of_a_ctrl_c_is_hidden_other_tracebacks_are_not():
    keep = library_logs.OwnInfoOnly().filter
    interrupt, failure = _exc_info(KeyboardInterrupt()), _exc_info(ValueError("disk"))
    assert not keep(_record(LIBRARY, logging.ERROR, "Save Finalize thread failed.", interrupt))
    assert keep(_record(LIBRARY, logging.ERROR, "Save Finalize thread failed.", failure))
    assert keep(_record(OWN, logging.ERROR, "ours", interrupt))
