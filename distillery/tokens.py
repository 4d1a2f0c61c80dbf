"""The shapes of Distillery's secrets, one definition for the services (which check them) and the
local stack (which makes the admin and service tokens of the services it starts).

Each kind has its own prefix, so a leaked value says what it is and log scrubbing can find it:
``dk_`` a tenant's API key, ``dat_`` the registry's admin token, ``dst_`` the service token the
services call each other with, ``drt_`` a training job's token for pushing its run's progress.
"""

from __future__ import annotations

import secrets

KEY_PREFIX = "dk_"
ADMIN_TOKEN_PREFIX = "dat_"
SERVICE_TOKEN_PREFIX = "dst_"
RUN_TOKEN_PREFIX = "drt_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(30)


def new_service_token() -> str:
    return SERVICE_TOKEN_PREFIX + secrets.token_urlsafe(30)


def new_run_token() -> str:
    return RUN_TOKEN_PREFIX + secrets.token_urlsafe(30)
