"""dstream: Unix pipes for data, with containers as the programs.

The orchestrator lives in the submodules (``dstream.cli``, ``dstream.relay`` …);
provider authors import :mod:`dstream.sdk`. This module stays import-light so that
provider processes start fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
