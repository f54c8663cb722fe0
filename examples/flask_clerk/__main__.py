"""``python -m examples.flask_clerk``: serve the example on http://127.0.0.1:5000."""

from __future__ import annotations

import os

from . import create_app


def main() -> None:
    clerk = bool(os.environ.get("CLERK_PUBLISHABLE_KEY"))
    # Debug mode enables the dev sign-in (never for production); the interactive debugger
    # and the reloader stay off.
    # Served on plain http://127.0.0.1 here, so the session cookie cannot be Secure; behind
    # TLS in production, leave LOCKKIT_INSECURE_COOKIES unset.
    app = create_app({"DEBUG": not clerk, "LOCKKIT_INSECURE_COOKIES": True})
    host, port = "127.0.0.1", int(os.environ.get("PORT", "5000"))
    print(f"\n  Private notes: http://{host}:{port}/  (sign-in: {app.config['NOTES_SIGN_IN']})\n", flush=True)
    app.run(host=host, port=port, use_debugger=False, use_reloader=False)


if __name__ == "__main__":
    main()
