"""Routes of the private-notes example."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from lockkit.errors import EncryptionError
from lockkit.flask import (
    current_claims,
    current_lock_context,
    end_session,
    get_state,
    identity_unavailable,
    lock_context_required,
)
from lockkit.provider import safe_next

from .db import Database
from .notes import (
    MAX_QUERY_CHARS,
    NotesUnavailable,
    NoteStore,
    ValidationError,
    clean,
    new_submit_token,
    notes_table,
    query_words,
    submit_token,
)

bp = Blueprint("notes", __name__)
log = logging.getLogger(__name__)

#: what a note page and /history show of the audit log: the newest entries only, read from the
#: log's end (never the whole log per request)
OPENED_SHOWN, HISTORY_SHOWN = 10, 200
#: the least time between two audit-log verifications asked for from /history (per process);
#: ``NOTES_AUDIT_VERIFY_INTERVAL`` in the app config changes it
AUDIT_VERIFY_INTERVAL = 60.0


def store() -> NoteStore:
    claims = current_claims()
    assert claims is not None  # every caller is behind @lock_context_required
    db: Database = current_app.extensions["notes_db"]
    client = get_state().encryption([notes_table])
    return NoteStore(db, client, claims["sub"], current_lock_context, submit_key=current_app.extensions["notes_submit_key"])


@bp.app_context_processor
def inject() -> dict[str, Any]:
    claims = current_claims()
    pk = current_app.config.get("CLERK_PUBLISHABLE_KEY", "")
    return {"user": claims.get("sub") if claims else None, "sign_in": current_app.config["NOTES_SIGN_IN"],
            "clerk_publishable_key": pk, "clerk_js_url": clerk_js_url(pk)}


def clerk_js_url(publishable_key: str) -> str:
    """Clerk's browser bundle, served by the instance's Frontend API (named inside the
    publishable key: ``pk_<env>_<base64("<frontend-api-host>$")>``)."""
    import base64
    import binascii

    try:
        encoded = publishable_key.split("_", 2)[2]
        host = base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode().rstrip("$")
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return ""
    if not host or "/" in host:
        return ""
    return f"https://{host}/npm/@clerk/clerk-js@6/dist/clerk.browser.js"


def unavailable(message: str) -> Any:
    """503 "Temporarily unavailable" (JSON ``{"error": "unavailable"}`` under /api/), with
    Retry-After: something the app depends on is down; nothing is wrong with the notes."""
    headers = {"Retry-After": "30"}
    if request.path.startswith("/api/"):
        return jsonify(error="unavailable", message="your notes are temporarily unavailable; try again shortly"), 503, headers
    return render_template("error.html", heading="Temporarily unavailable", message=message), 503, headers


#: what a page says when sign-in cannot complete (the identity provider's keys, the token
#: service or the OpenBao login unreachable)
SIGN_IN_UNAVAILABLE = ("Sign-in is temporarily unavailable: a service it depends on is not answering. "
                       "You do not need to sign in again; try again shortly.")


def sign_in_unavailable() -> bool:
    """Did lockkit's middleware find this request's identity but could not complete it (the
    identity provider's keys, the token service or the OpenBao login unreachable)? The state
    ``@lock_context_required`` answers 503 on: signing in again would not help."""
    return identity_unavailable()


@bp.errorhandler(NotesUnavailable)
def notes_unavailable(err: NotesUnavailable) -> Any:
    """Keys cannot be released right now (the key service is down, or its audit log cannot
    record the release): a 503, not "unreadable" — the notes are intact."""
    log.warning("notes unavailable: %s", err)
    return unavailable("Your notes are temporarily unavailable: the key service cannot release "
                       "keys (or record that it did) right now. Nothing was lost; try again shortly.")


@bp.get("/")
def index() -> Any:
    # not behind @lock_context_required (visitors get the landing page), so it answers the
    # outage itself: sending a signed-in user to sign in again would bring them back here
    if sign_in_unavailable():
        return unavailable(SIGN_IN_UNAVAILABLE)
    if current_claims() is None:
        return render_template("landing.html")
    return _list_page(store().all_notes(), heading="Your notes")


def _list_page(notes: list[Any], heading: str, **extra: Any) -> Any:
    return render_template("index.html", notes=notes, heading=heading, **extra)


@bp.get("/signin")
def signin() -> Any:
    # a same-site path only: the Clerk page hands it to window.location and Clerk's redirect,
    # where a "javascript:" URL would run in this origin and another host would be an open redirect
    nxt = safe_next(request.args.get("next"))
    if current_app.config["NOTES_SIGN_IN"] == "dev":
        return redirect(url_for("lockkit_dev.login", next=nxt))
    return render_template("signin_clerk.html", next=nxt)


@bp.post("/signout")
def signout() -> Any:
    end_session()  # revoke/forget the CTS token; a server-side session gets a new id
    for provider in get_state().providers:
        resp = provider.logout_response("/")
        if resp is not None:
            session.clear()
            return resp
    session.clear()
    if current_app.config["NOTES_SIGN_IN"] == "clerk":
        return render_template("signout_clerk.html")
    return redirect(url_for("notes.index"))


@bp.get("/notes/new")
@lock_context_required
def new_note() -> Any:
    # the form's token: sending it twice (the answer to the first got lost) saves one note.
    # Never kept by the browser: Back after saving fetches a new form, with a new token
    resp = make_response(render_template("note_form.html", note=None, form={}, submit_token=new_submit_token()))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/notes")
@lock_context_required
def create_note() -> Any:
    token = submit_token(request.form.get("submit_token"))
    try:
        title, body, tags = clean(request.form.get("title", ""), request.form.get("body", ""), request.form.get("tags", ""))
    except ValidationError as err:
        flash(str(err), "error")
        return render_template("note_form.html", note=None, form=request.form,
                               submit_token=token or new_submit_token()), 400
    # the same form twice with the same content: one note (other content: another note)
    note_id = store().create(title, body, tags, submit_token=token)
    flash("Note saved (encrypted).", "ok")
    return redirect(url_for("notes.show_note", note_id=note_id))


@bp.get("/notes/<int:note_id>")
@lock_context_required
def show_note(note_id: int) -> Any:
    note = store().get(note_id)
    if note is None:
        abort(404)
    audit_log = get_state().audit_log
    # the newest few, newest first, read from the log's end
    opened = audit_log.who_accessed("notes", str(note_id), limit=OPENED_SHOWN) if audit_log is not None else []
    return render_template("note.html", note=note, opened=opened)


@bp.get("/notes/<int:note_id>/edit")
@lock_context_required
def edit_note(note_id: int) -> Any:
    note = store().get(note_id)
    if note is None:
        abort(404)
    if not note.readable:  # editing would replace what cannot be shown: delete it instead
        flash("This note could not be decrypted; it can only be deleted.", "error")
        return redirect(url_for("notes.show_note", note_id=note_id))
    return render_template("note_form.html", note=note, form={"title": note.title, "body": note.body, "tags": ", ".join(note.tags)})


@bp.post("/notes/<int:note_id>")
@lock_context_required
def update_note(note_id: int) -> Any:
    s = store()
    current = s.get(note_id)
    if current is None:
        abort(404)
    if not current.readable:
        flash("This note could not be decrypted; it can only be deleted.", "error")
        return redirect(url_for("notes.show_note", note_id=note_id))
    try:
        title, body, tags = clean(request.form.get("title", ""), request.form.get("body", ""), request.form.get("tags", ""))
    except ValidationError as err:
        flash(str(err), "error")
        return render_template("note_form.html", note=s.get(note_id), form=request.form), 400
    if not s.update(note_id, title, body, tags):
        abort(404)
    flash("Note updated.", "ok")
    return redirect(url_for("notes.show_note", note_id=note_id))


@bp.post("/notes/<int:note_id>/delete")
@lock_context_required
def delete_note(note_id: int) -> Any:
    if not store().delete(note_id):
        abort(404)
    flash("Note deleted.", "ok")
    return redirect(url_for("notes.index"))


@bp.get("/search")
@lock_context_required
def search() -> Any:
    tag, text = request.args.get("tag", "").strip(), request.args.get("q", "").strip()
    try:
        if tag:
            return _list_page(store().by_tag(tag), heading=f"Notes tagged “{tag}”", tag=tag)
        if text:
            if not query_words(text):  # checks the length first: no key asked for a refused query
                flash("Search for a word of three or more letters.", "error")
                return redirect(url_for("notes.index"))
            return _list_page(store().search(text), heading=f"Notes matching “{text}”", q=text)
    except ValidationError as err:  # too many words or characters
        flash(str(err), "error")
        return _list_page([], heading="Search refused", q=text[:MAX_QUERY_CHARS], refused=True), 400
    except EncryptionError as err:
        if err.retryable:  # an outage, not the query: 503 (the LockkitError handler)
            raise
        flash("Search for a word of three or more letters.", "error")
    return redirect(url_for("notes.index"))


@bp.get("/history")
@lock_context_required
def history() -> Any:
    """The signed-in user's own access history, from lockkit's tamper-evident audit log: the
    newest entries, read from the log's end. The log is not verified here (that reads all of
    it): the page shows the last verification, which a POST to /history/verify runs."""
    audit_log = get_state().audit_log
    claims = current_claims()
    assert claims is not None
    events = audit_log.accessed_by(claims["sub"], limit=HISTORY_SHOWN) if audit_log is not None else None
    return render_template("history.html", events=events, check=_audit_check(), shown=HISTORY_SHOWN)


@dataclass
class AuditCheck:
    """The last verification of the audit log run from /history (per process)."""

    running: threading.Lock = field(default_factory=threading.Lock)
    started: float | None = None  # time.monotonic() when the last one started
    at: float | None = None  # time.time() when the last one finished
    ok: bool | None = None


def _audit_check() -> AuditCheck:
    check: AuditCheck = current_app.extensions.setdefault("notes_audit_check", AuditCheck())
    return check


@bp.post("/history/verify")
@lock_context_required
def verify_history() -> Any:
    """Verify the whole audit log on request: at most one verification at a time and one per
    ``NOTES_AUDIT_VERIFY_INTERVAL`` seconds (per process), whoever asks. Key releases go on
    meanwhile (``AuditLog.verify`` holds the writers' lock only to read the head). For regular
    checks run ``lockkit audit verify`` from cron."""
    audit_log = get_state().audit_log
    if audit_log is None:
        abort(404)
    check = _audit_check()
    interval = float(current_app.config.get("NOTES_AUDIT_VERIFY_INTERVAL", AUDIT_VERIFY_INTERVAL))
    if not check.running.acquire(blocking=False):
        flash("A verification is running; see the result in a moment.", "error")
        return redirect(url_for("notes.history"), code=303)
    try:
        now = time.monotonic()
        if check.started is not None and now - check.started < interval:
            flash(f"The log was verified less than {interval:.0f} seconds ago; the result is below.", "error")
            return redirect(url_for("notes.history"), code=303)
        check.started = now
        result = audit_log.verify()
        check.at, check.ok = time.time(), result.ok
        if not result.ok:
            log.error("audit log %s does not verify: %s", audit_log.path, result.problem)
    finally:
        check.running.release()
    return redirect(url_for("notes.history"), code=303)


@bp.get("/database")
@lock_context_required
def database() -> Any:
    rows = store().raw()
    return render_template("database.html", rows=[_pretty(r) for r in rows])


def _pretty(row: dict[str, Any]) -> str:
    """Indented JSON, but each bloom filter (a long list of ints) on one line."""
    text = json.dumps(row, indent=1)
    return re.sub(r"\[\s*((?:\d+,\s*)*\d+)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


@bp.get("/api/notes")
@lock_context_required
def api_notes() -> Any:
    """Every note; with ``?q=words``, the notes holding every word (as /search)."""
    text = request.args.get("q", "").strip()
    if not text:
        return jsonify(notes=[_as_json(n) for n in store().all_notes()])
    try:
        found = store().search(text)
    except ValidationError as err:
        return jsonify(error="query_too_long", message=str(err)), 400
    except EncryptionError as err:
        if err.retryable:  # an outage: 503, never "no note matches"
            raise
        found = []
    return jsonify(notes=[_as_json(n) for n in found])


def _as_json(n: Any) -> dict[str, Any]:
    if not n.readable:
        return {"id": n.id, "error": "unreadable"}
    return {"id": n.id, "title": n.title, "body": n.body, "tags": n.tags}


@bp.get("/api/notes/<int:note_id>")
@lock_context_required
def api_note(note_id: int) -> Any:
    note = store().get(note_id)
    if note is None:
        return jsonify(error="not_found"), 404
    return jsonify(_as_json(note))
