"""Routes of the private-notes example."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, session, url_for

from lockkit.errors import EncryptionError
from lockkit.flask import current_claims, current_lock_context, end_session, get_state, lock_context_required
from lockkit.provider import safe_next

from .db import Database
from .notes import NoteStore, ValidationError, clean, notes_table

bp = Blueprint("notes", __name__)


def store() -> NoteStore:
    claims = current_claims()
    assert claims is not None  # every caller is behind @lock_context_required
    db: Database = current_app.extensions["notes_db"]
    client = get_state().encryption([notes_table])
    return NoteStore(db, client, claims["sub"], current_lock_context)


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


@bp.get("/")
def index() -> Any:
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
    return render_template("note_form.html", note=None, form={})


@bp.post("/notes")
@lock_context_required
def create_note() -> Any:
    try:
        title, body, tags = clean(request.form.get("title", ""), request.form.get("body", ""), request.form.get("tags", ""))
    except ValidationError as err:
        flash(str(err), "error")
        return render_template("note_form.html", note=None, form=request.form), 400
    note_id = store().create(title, body, tags)
    flash("Note saved (encrypted).", "ok")
    return redirect(url_for("notes.show_note", note_id=note_id))


@bp.get("/notes/<int:note_id>")
@lock_context_required
def show_note(note_id: int) -> Any:
    note = store().get(note_id)
    if note is None:
        abort(404)
    log = get_state().audit_log
    opened = log.who_accessed("notes", str(note_id))[-10:] if log is not None else []
    return render_template("note.html", note=note, opened=list(reversed(opened)))


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
    if text and all(len(w) < 3 for w in text.split()):
        flash("Search for a word of three or more letters.", "error")
        return redirect(url_for("notes.index"))
    try:
        if tag:
            return _list_page(store().by_tag(tag), heading=f"Notes tagged “{tag}”", tag=tag)
        if text:
            return _list_page(store().search(text), heading=f"Notes matching “{text}”", q=text)
    except EncryptionError:
        flash("Search for a word of three or more letters.", "error")
    return redirect(url_for("notes.index"))


@bp.get("/history")
@lock_context_required
def history() -> Any:
    """The signed-in user's own access history, from lockkit's tamper-evident audit log."""
    log = get_state().audit_log
    claims = current_claims()
    assert claims is not None
    events = list(reversed(log.accessed_by(claims["sub"])))[:200] if log is not None else None
    intact = log.verify().ok if log is not None else None
    return render_template("history.html", events=events, intact=intact)


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
    return jsonify(notes=[_as_json(n) for n in store().all_notes()])


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
