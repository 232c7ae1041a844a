"""Every change made from the command line goes into the audit log, as API changes do.

An operator at the server's shell can do what an admin token can (add extensions, lift
bans, allow a country), so ``pbxwarden audit-log`` must show those changes too. The
actor is ``cli:`` and the local user the command ran as (the real uid, not ``$USER``,
which the caller sets); the source is ``cli``. Secrets in ``before``/``after`` are
replaced by ``[redacted]`` in :meth:`pbxwarden.store.admin.AdminStore.audit`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbxwarden.store.db import Store

SOURCE = "cli"


def actor() -> str:
    """``cli:alice``: the account the command runs as."""
    try:
        import pwd

        name = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry (a container's bare uid)
        name = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{SOURCE}:{name}"


def record(
    store: Store,
    action: str,
    resource: str,
    before: Any = None,
    after: Any = None,
    tenant: str | None = None,
) -> None:
    """Append one entry for a change that has just been made (the same actions and
    resources as the API's, e.g. ``extension.create``, ``tenant/acme/extension/1000``)."""
    from pbxwarden.store.admin import AdminStore

    AdminStore(store).audit(actor(), SOURCE, action, resource, before, after, tenant)
