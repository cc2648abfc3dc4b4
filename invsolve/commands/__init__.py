"""Subcommands of the ``invsolve`` command line.

Every module in this package is one subcommand.  It defines
``register(subparsers) -> None``, which adds its parser and calls
``set_defaults(func=run)``, and ``run(args) -> int``, which returns the exit
status.  Modules are discovered here, so a new file is all a new command needs;
modules whose name starts with ``_`` are helpers, not commands.
"""

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """The subcommand modules of this package, sorted by name."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
