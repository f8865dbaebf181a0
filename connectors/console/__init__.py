"""The review console: server-rendered pages under /console, served by the daemon (Flask templates and one small
stylesheet and script of its own: no front-end build step, no CDN, works offline).

`init_console(app, ctx, config, env)` is called by the app factory; it sets the session cookie's flags, the signing
key, and registers the blueprint (views.py). Pages: log-in, the review queue, a ticket (accept / correct /
dismiss), the dashboard and the try-it box.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Mapping

from flask import Flask

from .auth import Accounts, LoginBrake, signing_key

log = logging.getLogger(__name__)

URL_PREFIX = "/console"
COOKIE_NAME = "triage_console"


def init_console(app: Flask, ctx: Any, config: Any, env: Mapping[str, str]) -> bool:
    """Mount the console on `app` when `console.enabled`; returns whether it was mounted."""
    section = config["console"]
    if not section["enabled"]:
        return False
    from .similar import SimilarIndex, retrain_output_dir
    from .views import blueprint

    accounts = Accounts.from_config(section, env)
    key, origin = signing_key(section, env, accounts)
    if not accounts.any:
        log.warning("console: no log-in is configured (set %s or console.users): /console refuses every log-in",
                    section["admin_token_env"])
    elif origin.startswith("random"):
        log.warning("console: session cookies are signed with a random key (set %s): sessions end at a restart "
                    "and are not shared between processes", section["secret_key_env"])
    app.secret_key = key
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=URL_PREFIX,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(section["secure_cookie"]),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=float(section["session_hours"])),
    )
    app.extensions["triage_console"] = {
        "ctx": ctx,
        "config": config,
        "section": dict(section),
        "accounts": accounts,
        "brake": LoginBrake(),
        "similar": SimilarIndex(ctx.store, retrain_output_dir(config), float(section["similar_refresh_seconds"])),
    }
    app.register_blueprint(blueprint, url_prefix=URL_PREFIX)
    return True
