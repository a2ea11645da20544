"""Targets: presets by name, popcount lowering rules, toolchains and runners."""
from .presets import TargetSpec, known_targets, resolve_target

__all__ = ["TargetSpec", "known_targets", "resolve_target"]
