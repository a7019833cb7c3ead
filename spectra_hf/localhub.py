"""Former home of the local Hub, kept for users' code that followed the 0.1 README (`spectra_hf.localhub.LocalHub`).

New code imports from `spectra_hf.hub.localhub`.
"""

from spectra_hf.hub.localhub import ROUTE_KINDS, Fault, LocalHub

__all__ = ["ROUTE_KINDS", "Fault", "LocalHub"]
