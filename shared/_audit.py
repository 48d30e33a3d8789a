"""The audit log: every administrative action, with who did it (the service key's name, or the operator)."""

from __future__ import annotations

import logging
from typing import Any

from ._metrics import Metrics

log = logging.getLogger("herald.audit")


def audit(metrics: Metrics | None, *, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
    """One structured line on the ``herald.audit`` logger (and ``herald_audit_actions_total``): never a secret, address or body."""
    log.info(
        "audit: %s by %s%s",
        action,
        actor,
        f" on {target}" if target else "",
        extra={"audit_action": action, "audit_actor": actor, "audit_target": target, **{f"audit_{k}": v for k, v in detail.items()}},
    )
    if metrics is not None:
        metrics.audit_actions.labels(action=action, actor=actor).inc()
