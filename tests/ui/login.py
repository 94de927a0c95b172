"""Logging in to a web UI that asks for it, as a browser does (cookies, CSRF token)."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.request
from urllib.parse import urlencode

__all__ = ["csrf_token", "logged_in"]


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def logged_in(base: str, user: str, password: str) -> urllib.request.OpenerDirector:
    """An opener holding a session of ``user`` (raises AssertionError if the login fails)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(base + "/login", timeout=30) as response:
        token = csrf_token(response.read().decode())
    form = {"csrf": token, "user": user, "password": password, "next": "/runs"}
    with opener.open(base + "/login", data=urlencode(form).encode(), timeout=30) as response:
        assert "/login" not in response.url, "the login was refused"
    return opener
