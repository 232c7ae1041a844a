"""``pbxwarden extension unlock`` and ``extension trunk-access``: the administrator's side
of extension locks (:mod:`pbxwarden.firewall.locks`). Both changes are audited."""

from __future__ import annotations

from typing import Annotated

import typer

from pbxwarden.cli.admin import _open
from pbxwarden.cli.audit_trail import actor, record
from pbxwarden.cli.output import fail, out, when
from pbxwarden.store.basics import DEFAULT_TENANT, StoreError

TenantOption = Annotated[str, typer.Option(help="Tenant of the extension.")]


def extension_unlock(
    ctx: typer.Context, number: str, tenant: TenantOption = DEFAULT_TENANT
) -> None:
    """Lift an extension's lock (distributed password guessing) before it ends.

    A new password (extension password) lifts it too, and is the better answer: the lock
    means someone is guessing the password. A running server follows within a second."""
    from pbxwarden.store.locks import LockStore

    _, store, _ = _open(ctx)
    try:
        locks = LockStore(store)
        lock = locks.lock_of(tenant, number)
        if not locks.lift(tenant, number, actor()):
            out.print(f"extension {number} is not locked")
            return
        assert lock is not None
        record(
            store,
            "extension.unlock",
            f"tenant/{tenant}/extension/{number}",
            {"locked_until": lock.until, "reason": lock.reason},
            {"locked_until": None},
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    out.print(
        f"extension {number} unlocked (it was locked until {when(lock.until)}: {lock.reason})"
    )


def extension_trunk_access(
    ctx: typer.Context,
    number: str,
    allow: Annotated[
        bool,
        typer.Option(
            "--allow/--deny",
            help="Whether its credentials may be used from a trunk's address (an SBC in "
            "front of the phones); denied by default.",
        ),
    ],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Allow (or deny again) an extension to register and call from a trunk's address."""
    from pbxwarden.store.locks import LockStore

    _, store, _ = _open(ctx)
    try:
        before = LockStore(store).set_trunk_access(tenant, number, allow)
        record(
            store,
            "extension.trunk_access",
            f"tenant/{tenant}/extension/{number}",
            {"trunk_access": before},
            {"trunk_access": allow},
            tenant,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    what = "may now" if allow else "may no longer"
    out.print(f"extension {number} {what} register or call from a trunk's address")
