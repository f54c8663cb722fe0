"""The example app in a real browser (Debian's Chromium driven by Playwright) against a real
server on loopback: alice signs in through the dev form, writes two notes, finds one by tag and
the other by a word of its body, signs out; bob sees none of it and gets 404 for her note's URL;
the SQLite file holds no plaintext. Screenshots of each step go to artifacts/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from .example_support import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    assert_no_plaintext,
    example_app,
    example_env,
    serve,
    sqlite_dump,
    sqlite_file_bytes,
    sqlite_path,
)

NOTE_1 = {"title": "Birdwatching trip", "body": "Pack the binoculars and the heron guidebook.",
          "tags": "Outdoors, weekend"}
NOTE_2 = {"title": "Dentist appointment", "body": "Bring the insurance paperwork on Thursday.",
          "tags": "health"}
PLAINTEXT = ["Birdwatching trip", "Birdwatching", "binoculars", "heron guidebook", "guidebook", "Outdoors",
             "weekend", "Dentist appointment", "Dentist", "appointment", "insurance", "paperwork", "Thursday",
             "health"]


@pytest.fixture
def live_app(example_env: str, sqlite_path: Path) -> Iterator[tuple[Flask, str]]:
    """The example app on a temp SQLite file, served by a real threaded server on 127.0.0.1."""
    with example_app(f"sqlite:///{sqlite_path}", example_env) as app, serve(app) as base:
        yield app, base


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(reason=f"{CHROMIUM} is not installed (CI installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Shots:
    """Numbered PNG screenshots in artifacts/screenshots/."""

    def __init__(self, prefix: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{prefix}-*.png"):
            old.unlink()
        self.prefix, self.n = prefix, 0

    def __call__(self, page: Any, name: str, *, full_page: bool = True) -> Path:
        self.n += 1
        path = SCREENSHOTS / f"{self.prefix}-{self.n:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


def _sign_in(page: Any, base: str, name: str, shot: Shots) -> None:
    page.goto(base + "/")
    page.click("#signin")
    page.wait_for_url(re.compile(r"/lockkit/dev/login"))
    assert "Development sign-in." in page.inner_text("body")
    page.fill("input[name=name]", name)
    shot(page, f"{name}-signin-form")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    assert page.inner_text("#whoami") == name


def _write(page: Any, base: str, note: dict[str, str], shot: Shots, name: str) -> str:
    page.click("text=New note")
    page.wait_for_url(base + "/notes/new")
    page.fill("#title", note["title"])
    page.fill("#body", note["body"])
    page.fill("#tags", note["tags"])
    shot(page, f"{name}-form")
    page.click("#save")
    page.wait_for_url(re.compile(r"/notes/\d+$"))
    assert page.inner_text("h1") == note["title"]
    assert page.inner_text("p.body") == note["body"]
    assert "Note saved (encrypted)." in page.inner_text(".flash.ok")
    shot(page, f"{name}-saved")
    return str(page.url)


def _result_titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("article.note h2").all_inner_texts()]


def test_two_users_in_a_real_browser(live_app: tuple[Flask, str], browser: Any, sqlite_path: Path) -> None:
    _, base = live_app
    shot = Shots("example")

    # alice
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    page = ctx.new_page()
    page.goto(base + "/")
    assert "Sign in to start" in page.inner_text("body")
    shot(page, "landing")
    _sign_in(page, base, "alice", shot)
    url_1 = _write(page, base, NOTE_1, shot, "alice-note1")
    url_2 = _write(page, base, NOTE_2, shot, "alice-note2")
    assert url_1 != url_2

    page.goto(base + "/")
    assert sorted(_result_titles(page)) == sorted([NOTE_1["title"], NOTE_2["title"]])
    shot(page, "alice-list")

    page.fill("input[name=tag]", "outdoors")
    page.click("#search-tag")
    page.wait_for_url(re.compile(r"/search\?tag=outdoors"))
    assert _result_titles(page) == [NOTE_1["title"]]
    assert "Notes tagged “outdoors”" in page.inner_text("h1")
    shot(page, "alice-tag-search")

    page.fill("input[name=q]", "insurance")
    page.click("#search-text")
    page.wait_for_url(re.compile(r"/search\?q=insurance"))
    assert _result_titles(page) == [NOTE_2["title"]]
    shot(page, "alice-text-search")

    page.click("text=What the database sees")
    page.wait_for_url(base + "/database")
    raw = "\n".join(page.locator("pre.raw").all_inner_texts())
    assert raw.count('"table": "notes"') == 2 and '"c": "' in raw
    assert_no_plaintext(raw, PLAINTEXT, "the /database page")
    shot(page, "alice-database", full_page=False)  # the full page is thousands of pixels tall

    page.click("#signout")
    page.wait_for_url(base + "/")
    assert page.locator("#signin").is_visible()
    shot(page, "alice-signed-out")
    resp = page.goto(url_1)
    assert resp is not None and "/lockkit/dev/login" in page.url  # signed out: back to sign-in
    ctx.close()

    # bob, in a fresh browser profile
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    page = ctx.new_page()
    _sign_in(page, base, "bob", shot)
    assert page.locator("#empty").is_visible()
    assert _result_titles(page) == []
    body = page.inner_text("body")
    assert_no_plaintext(body, PLAINTEXT, "bob's note list")
    shot(page, "bob-list")
    page.fill("input[name=tag]", "outdoors")
    page.click("#search-tag")
    page.wait_for_url(re.compile(r"/search\?tag=outdoors"))
    assert _result_titles(page) == [] and page.locator("#empty").is_visible()
    page.goto(base + "/search?q=insurance")
    assert _result_titles(page) == []
    resp = page.goto(url_1)
    assert resp is not None and resp.status == 404
    assert_no_plaintext(page.content(), PLAINTEXT, "bob's view of alice's note URL")
    shot(page, "bob-404")
    resp = page.goto(url_2 + "/edit")
    assert resp is not None and resp.status == 404
    ctx.close()

    # the raw SQLite file, read directly
    assert_no_plaintext(sqlite_dump(sqlite_path), PLAINTEXT, "the SQLite tables")
    assert_no_plaintext(sqlite_file_bytes(sqlite_path), PLAINTEXT, "the SQLite files")
    assert os.path.getsize(sqlite_path) > 0
