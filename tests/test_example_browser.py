"""The example app in a real browser (Debian's Chromium driven by Playwright) against a real
server on loopback: alice signs in through the dev form, writes two notes, finds one by tag and
the other by a word of its body, signs out; bob sees none of it and gets 404 for her note's URL;
the SQLite file holds no plaintext. Screenshots of each step go to artifacts/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import urlencode
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from .example_support import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    CLERK_HOST,
    SCREENSHOTS,
    assert_no_plaintext,
    clerk_example,
    example_app,
    example_env,
    free_port,
    route_offline,
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


def watch_csp(page: Any) -> list[str]:
    """The Content-Security-Policy violations the page reports (Chromium logs each one)."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def test_two_users_in_a_real_browser(live_app: tuple[Flask, str], browser: Any, sqlite_path: Path) -> None:
    _, base = live_app
    shot = Shots("example")

    # alice
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    page = ctx.new_page()
    csp = watch_csp(page)
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
    assert csp == []  # every page, the dev sign-in's included, works under the policy
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


# -- Clerk mode: Clerk's bundle faked at its Frontend API URL, nothing leaves loopback ---------
FAKE_CLERK_JS = """
window.__clerk = window.__clerk || [];
window.Clerk = {
  user: window.__clerkUser || null,
  load: function () { window.__clerk.push("load"); return Promise.resolve(); },
  mountSignIn: function (el, opts) {
    window.__clerk.push("mountSignIn " + opts.forceRedirectUrl); el.textContent = "Clerk sign-in form";
  },
  signOut: function (opts) {
    window.__clerk.push("signOut " + opts.redirectUrl); window.location.assign(opts.redirectUrl);
    return Promise.resolve();
  }
};
"""


@pytest.fixture
def clerk_live(example_env: str, sqlite_path: Path) -> Iterator[tuple[str, Any]]:
    """The example in Clerk mode on 127.0.0.1 (its origin is the authorized party), and a
    minter of session tokens for it."""
    port = free_port()
    ctx, mint = clerk_example(example_env, sqlite_path, party=f"http://127.0.0.1:{port}")
    with ctx as app, serve(app, port) as base:
        yield base, mint


def _clerk_page(browser: Any, base: str, outside: list[str], session: str | None = None) -> Any:
    clerk_js = f"https://{CLERK_HOST}/npm/@clerk/clerk-js@6/dist/clerk.browser.js"
    context = browser.new_context()
    if session is not None:
        import time

        context.add_cookies([{"name": "__session", "value": session, "url": base},
                             {"name": "__client_uat", "value": str(int(time.time()) - 3600), "url": base}])
    route_offline(context, base, {clerk_js: FAKE_CLERK_JS}, outside)
    page = context.new_page()
    page.set_default_timeout(10_000)
    return page


@pytest.mark.parametrize(("given", "kept"), [("/notes/new", "/notes/new"), ("https://evil.example/x", "/"),
                                             ("javascript:alert(1)", "/")])
def test_clerk_sign_in_page_mounts_clerk_under_the_policy(
    clerk_live: tuple[str, Any], browser: Any, given: str, kept: str
) -> None:
    """The sign-in page has no inline script: the page's static script mounts Clerk's form once
    Clerk's bundle (from the Frontend API the policy names) has loaded, and sends the user on
    to a same-site path only."""
    base, _ = clerk_live
    outside: list[str] = []
    page = _clerk_page(browser, base, outside)
    csp = watch_csp(page)
    resp = page.goto(base + "/signin?" + urlencode({"next": given}))
    assert resp is not None and "script-src 'self' https://" + CLERK_HOST in resp.headers["content-security-policy"]
    page.wait_for_selector("text=Clerk sign-in form")
    assert page.evaluate("window.__clerk") == ["load", f"mountSignIn {base}{kept}"]
    assert (csp, outside) == ([], [])


def test_clerk_pages_keep_the_session_alive_and_sign_out_under_the_policy(
    clerk_live: tuple[str, Any], browser: Any
) -> None:
    """A signed-in page loads Clerk (which renews the 60 s session cookie); signing out runs
    Clerk's signOut from the sign-out page; no policy violation on the way."""
    base, mint = clerk_live
    outside: list[str] = []
    page = _clerk_page(browser, base, outside, session=mint("user_2alice"))
    csp = watch_csp(page)
    page.goto(base + "/notes/new")
    page.wait_for_function("window.__clerk && window.__clerk.length === 1")
    assert page.evaluate("window.__clerk") == ["load"]
    assert page.inner_text("#whoami") == "user_2alice"
    page.click("#signout")
    page.wait_for_url(base + "/")
    assert (csp, outside) == ([], [])


def test_the_policy_is_enforced_in_the_browser(clerk_live: tuple[str, Any], browser: Any) -> None:
    """The checks above can fail: an inline script (what the pages used to have) is refused,
    and the refusal is seen."""
    base, _ = clerk_live
    outside: list[str] = []
    page = _clerk_page(browser, base, outside)
    csp = watch_csp(page)
    page.goto(base + "/signin")
    page.wait_for_selector("text=Clerk sign-in form")
    with pytest.raises(Exception, match="violates the following Content Security Policy directive 'script-src"):
        page.add_script_tag(content="window.__inline = true;")
    assert page.evaluate("window.__inline === undefined")
    for _ in range(50):  # console messages arrive as events: wait for the refusal's
        if csp:
            break
        page.wait_for_timeout(100)
    assert any("inline script" in message for message in csp), csp
