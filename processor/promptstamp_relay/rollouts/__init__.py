"""Prompt rollouts: per-version generation metrics, the label timeline, and the ``labels``
commands (show, compare, rollback, promote). See docs/rollouts.md.

This package's ``__init__`` imports only what the configuration loader needs (``config/``
imports :class:`RolloutsConfig`); the component is ``rollouts.component``, the command line
``labels_cli`` (the ``labels`` commands, beside ``cli``).
"""

from ._config import RolloutsConfig

__all__ = ["RolloutsConfig"]
