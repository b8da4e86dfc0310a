"""Keyboard control of the Engine when its menu (``menu.py``) is not on screen: under
``--auto``, or when stdin or stdout is not a terminal. The keys are bound in ``cli.py``; reading
them is shared with the Monitor's menu (``ev_common/keyboard.py``)."""

from ev_common.keyboard import Action, Prompt, run_keyboard

__all__ = ["Action", "Prompt", "run_keyboard"]
