"""Scoring strategies: one module each, found and registered automatically.

A new method is one file in this folder that decorates a function with `@register(...)`.
"""

from prunecli.scoring.registry import ScoringContext, Strategy, available, describe, get, register

__all__ = ["ScoringContext", "Strategy", "available", "describe", "get", "register"]
