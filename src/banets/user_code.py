"""The one place banets imports your code: modules named with ``--import`` or ``imports:``, and the modules of
``module:function`` losses, optimizers and schedules.

An output folder is data. Its ``config.yaml`` records the modules the run imported, but whoever wrote the folder
wrote that list too (and the digest beside it), so ``banets resume`` and :func:`banets.load` import a recorded
module only when you vouch for it: you gave it again (``--import``, or imported it yourself before calling
``load``), or you said to trust the run (``--trust-imports``, ``trust_code=True``). ``banets report`` imports
nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

from banets.config import UserError, first_line


class SetupError(UserError, ValueError):
    """What a run would train on cannot be set up: a module, a model's options, the device, the batch split."""


class UntrustedCodeError(SetupError):
    """An output folder names a module that banets will not import without the user's word."""


def import_modules(names: Sequence[str]) -> None:
    """Import the user's modules (``--import``, ``imports:``), so that their registered models, datasets and
    losses can be named. A file in the current folder is found too, after installed packages: a ``numpy.py``
    lying there never replaces numpy."""
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if not (name == error.name or name.startswith(f"{error.name}.")):  # found; it imports what is not installed
                raise SetupError(
                    f"importing {name!r} failed at {failed_line(error, name)} ({error}); install what it needs"
                ) from None
            raise SetupError(
                f"cannot import {name!r} ({error}); pass a module importable from here (a file "
                f"{name.replace('.', '/')}.py in this folder, or an installed package)"
            ) from None
        except UserError:
            raise  # banets refused something the module registers: its own one-line message
        except SystemExit as error:  # sys.exit() at import would end banets without a word
            raise SetupError(
                f"importing {name!r} called sys.exit({error.code!r}) at {failed_line(error, name)}; a module "
                f"banets imports must not exit when imported"
            ) from None
        except Exception as error:  # the user's module failed while it ran: say where, not banets' traceback
            raise SetupError(
                f"importing {name!r} failed at {failed_line(error, name)} ({type(error).__name__}: "
                f"{first_line(error)}); fix the module"
            ) from None


def imported_function(reference: str, what: str) -> Callable:
    """The function ``module:function`` names (``what`` says what it is for, in the message when it cannot be had)."""
    module_name, _, attribute = reference.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SetupError(
            f"{what} {reference!r} cannot be imported ({error}); check the module:function name "
            f"or import its module first (--import MODULE)"
        ) from None
    if not callable(function):
        raise SetupError(f"{what} {reference!r} is not callable")
    return function


def failed_line(error: BaseException, module: str) -> str:
    """``file:line`` where importing ``module`` failed: the syntax error's, else the last line of the module's own
    file in the traceback (not the library it called)."""
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}"
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # a package whose __init__ fails, a relative name
        spec = None
    frames = [f for f in traceback.extract_tb(error.__traceback__) if spec is not None and f.filename == spec.origin]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else module


def check_recorded_modules(names: Iterable[str], run_folder: Path, vouched: Collection[str], how_to_vouch: str) -> None:
    """Refuse the first of ``names`` (modules an output folder records) that the user has not vouched for by
    naming it in ``vouched``. Nothing is imported to find out: an installed module may act when imported (a
    ``__main__``), so being installed is no vouching. ``how_to_vouch`` is the hint, with ``{name}``."""
    for name in names:
        if name not in vouched:
            raise UntrustedCodeError(f"{run_folder} records the module {name!r}; banets imports no code that an "
                                     f"output folder names: if you trust it, {how_to_vouch.format(name=name)}")
