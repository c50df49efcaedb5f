"""The wire names, re-exported for SDK users; defined once in :mod:`promptstamp_contract`."""

from promptstamp_contract import *  # noqa: F403
from promptstamp_contract import __all__ as __all__
