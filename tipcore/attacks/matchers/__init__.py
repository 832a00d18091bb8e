"""The matchers: one module each, discovered here (no import line elsewhere names them).

A matcher module declares a frozen config dataclass of ``tipcore.common.knobs.knob`` fields and one class,
registered with ``tipcore.attacks.registry.register_matcher`` (name, label, summary, whether it flags
channels), whose ``fit(received) -> tipcore.attacks.fitted.Fitted`` decides from the architecture and the
received update alone what the attacker matches. Modules import without torch; ``fit`` imports it.
Registering makes ``{attack}_{matcher}`` exist for dlg, idlg and ig.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
