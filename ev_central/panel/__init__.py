"""Central's full-screen monitoring panel (Textual): CP tiles, ongoing requests, messages, commands.

``EV_Central --ui panel`` runs it (the default on a terminal); see docs/panel.md.
"""

from __future__ import annotations

from .app import CentralPanel

__all__ = ["CentralPanel"]
