"""Defenses, registered by name in ``DEFENSES``.

Every module of this package registers its defenses when it is imported, and this package imports every
module it holds, in name order, so a new defense is one new file here with no import line elsewhere. The
undefended baseline is put first in the registry (it leads every comparison). Nothing here imports torch at
import time (docs/ARCHITECTURE.md, "Registries"): a defense imports it inside the code that computes.
"""

import importlib
import pkgutil

from tipcore.defenses.base import (  # noqa: F401
    BASELINE, DEFENSES, DefenseDiagnostics, LayerDiagnostics, bind_round, check_model, create, describe,
    protect_in_stages, takes_clip,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
if BASELINE in DEFENSES:
    DEFENSES.update({name: DEFENSES.pop(name) for name in [n for n in DEFENSES if n != BASELINE]})
