"""The templates keep to the CSP (`style-src 'self'`, `script-src 'self'`), read as files:
no inline style or script, no event-handler attributes, and htmx told to add no inline
styles of its own, evaluate nothing, and run no script tags in what it swaps in.

The browser walk (tests/browser/test_csp_browser.py) checks the pages as rendered.
"""

import json
import re
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).parents[2] / "templates"
ALL = sorted(TEMPLATES.rglob("*.html"))

FORBIDDEN = {
    "an inline style attribute": re.compile(r"\sstyle\s*=", re.IGNORECASE),
    "a <style> element": re.compile(r"<style\b", re.IGNORECASE),
    "an inline <script>": re.compile(r"<script\b(?![^>]*\ssrc=)", re.IGNORECASE),
    "an event-handler attribute": re.compile(r"\son[a-z]+\s*=", re.IGNORECASE),
    "an hx-on attribute (needs eval)": re.compile(r"\shx-on", re.IGNORECASE),
    "a javascript: URL": re.compile(r"javascript:", re.IGNORECASE),
}


def test_there_are_templates_to_check():
    assert len(ALL) > 20


@pytest.mark.parametrize("template", ALL, ids=lambda path: str(path.relative_to(TEMPLATES)))
def test_a_template_has_nothing_inline(template):
    text = template.read_text()
    found = [what for what, pattern in FORBIDDEN.items() if pattern.search(text)]
    assert found == []


def test_htmx_adds_no_inline_style_and_evaluates_nothing():
    base = (TEMPLATES / "base.html").read_text()
    config = json.loads(re.search(r"name=\"htmx-config\" content='([^']*)'", base).group(1))
    assert config["includeIndicatorStyles"] is False  # else htmx adds a <style> element
    assert config["allowEval"] is False  # no eval under script-src 'self' anyway
    assert config["allowScriptTags"] is False  # swapped-in content runs no script
    assert config["selfRequestsOnly"] is True
