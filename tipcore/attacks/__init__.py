"""Gradient-inversion attacks, registered by name in ``ATTACKS``: the naive ones (dlg, idlg, ig) and one
adaptive variant ``{base}_{matcher}`` per registered matcher (``MATCHERS``, one module each in
``tipcore/attacks/matchers/``), all configurations of one template. Importing this package loads the
declarations only (no torch); the engine is imported when an attack runs."""

from tipcore.attacks.base import (  # noqa: F401
    ATTACK_PRESETS, ATTACKS, MATCHERS, Attack, AttackResult, AttackSpec, MatcherSpec, Snapshot, adaptive_variants,
    base_attack, create, drive, is_adaptive, never_stop, preset_options, register_matcher, unregister_matcher,
)
from tipcore.attacks import matchers  # noqa: F401,E402  (discovers and registers every matcher)
from tipcore.attacks import dlg, ig  # noqa: F401,E402  (registers the attacks and their adaptive variants)
