"""EV_Front's files themselves (no browser): the state colours are the terminal panel's, nothing
is loaded from another machine, nothing would need a looser Content-Security-Policy, and the
operator's token is kept in sessionStorage only."""

from __future__ import annotations

import re
from pathlib import Path

from ev_central.api.app import SECURITY_HEADERS, STATIC_DIR
from ev_common.words import CP_STATES, STATE_COLOURS

INDEX = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
SCRIPT = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
STYLE = (STATIC_DIR / "style.css").read_text(encoding="utf-8")


def test_the_state_colours_are_the_panels():
    declared = dict(re.findall(r"--state-([A-Z]+):\s*(#[0-9a-fA-F]{6});", STYLE))
    assert declared == {state: STATE_COLOURS[state] for state in CP_STATES}
    for state in CP_STATES:  # each tile's background is its state's variable
        assert re.search(rf"\.tile\.state-{state}\s*\{{\s*background:\s*var\(--state-{state}\)", STYLE), state


def test_the_page_loads_nothing_from_elsewhere():
    for text in (INDEX, SCRIPT, STYLE):
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text)
        assert not re.search(r"url\(\s*[\"']?(?:https?:)?//", text)
        assert "@import" not in text
    assert "fetch(\"http" not in SCRIPT and "EventSource(\"http" not in SCRIPT
    files = sorted(path.name for path in Path(STATIC_DIR).iterdir())
    assert files == ["app.js", "favicon.svg", "index.html", "style.css"]
    assert '<script type="module" src="app.js"></script>' in INDEX


def test_nothing_needs_a_looser_content_security_policy():
    policy = dict(SECURITY_HEADERS)[b"content-security-policy"].decode()
    assert "script-src 'self';" in policy and "style-src 'self';" in policy and "'unsafe-inline'" not in policy
    assert "<script>" not in INDEX and not re.search(r"<script(?![^>]*\bsrc=)", INDEX)  # no inline script
    assert " style=" not in INDEX and "<style" not in INDEX  # no inline style
    assert not re.search(r"\bon[a-z]+\s*=", INDEX)  # no inline handlers
    assert "innerHTML" not in SCRIPT and "insertAdjacentHTML" not in SCRIPT and "eval(" not in SCRIPT
    assert "setAttribute(\"style\"" not in SCRIPT and ".style." not in SCRIPT


def test_the_token_is_kept_in_the_tab_only():
    assert "sessionStorage.setItem" in SCRIPT
    assert "localStorage." not in SCRIPT and "document.cookie" not in SCRIPT
    # never in a URL: the form is never submitted anywhere (method="dialog"), the field is a password
    assert re.search(r'<form id="token-form" method="dialog"', INDEX)
    assert re.search(r'<input id="token"[^>]*type="password"', INDEX)
