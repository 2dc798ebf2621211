"""Where a request goes: the one place that turns what the filters stated on the flow into its targets.

Precedence, after every ``on_request`` filter ran:

1. ``flow.pin`` (a session pinned to a model) goes first, when it names a model the caller may use;
2. then ``flow.route`` (a router's decision): its models, in order;
3. without a route, the model the client named (``provider/id``, a bare id, an alias), or the default
   model for no model or ``"auto"``;
4. each model is followed by its ``retry_policy.fallback_models`` (skipping those the principal may not use).

Every target is checked against ``flow.principal`` (``may_use``). An unknown model is a 404 whose message
lists only the models the caller may use: none when the listener authenticates and there is no principal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from core.filter import LocalReply
from core.flow import Flow, Principal
from core.target import Target
from core.upstream import Upstreams


def resolve_targets(flow: Flow, upstreams: Upstreams, authenticates: bool,
                    fallbacks: Callable[[str], Sequence[str]] | None = None) -> LocalReply | None:
    """Sets ``flow.targets``; a LocalReply when the request cannot go anywhere."""
    principal = flow.principal
    requested = flow.model if flow.model != "auto" else None
    targets: list[Target] = []
    if flow.route is not None:
        targets = [t for t in (upstreams.resolve(name) for name in flow.route.models) if t is not None]
        for target in targets:
            if not _may_use(principal, target):
                return _forbidden(principal, target.model)
    else:
        named = upstreams.resolve(requested)
        if named is not None:
            if not _may_use(principal, named, requested):
                return _forbidden(principal, requested or named.model)
            targets = [named]
    if flow.pin is not None:
        pinned = upstreams.resolve(flow.pin)
        if pinned is not None and _may_use(principal, pinned, flow.pin):
            targets = [pinned, *(t for t in targets if t.model != pinned.model)]
    if not targets:
        if requested is not None:
            listed = [] if authenticates and principal is None else _usable(principal, upstreams.names())
            names = ", ".join(listed) or "none"
            return LocalReply(404, f"model {requested!r} is not served here (available: {names})",
                              "model.not_found")
        return LocalReply(400, "no model given and no default model is configured", "model.required")
    if fallbacks is not None:
        targets = _with_fallbacks(principal, upstreams, targets, fallbacks)
    flow.targets = targets
    return None


def _with_fallbacks(principal: Principal | None, upstreams: Upstreams, targets: list[Target],
                    fallbacks: Callable[[str], Sequence[str]]) -> list[Target]:
    """Each model followed by its retry policy's ``fallback_models`` (theirs too), once each; a fallback the
    principal may not use is skipped, not refused: the caller asked for the first model, not for it."""
    out: list[Target] = []
    seen: set[str] = set()
    pending = list(reversed(targets))
    while pending:
        target = pending.pop()
        if target.model in seen:
            continue
        seen.add(target.model)
        out.append(target)
        after = [(name, upstreams.resolve(name)) for name in fallbacks(target.entry)]
        pending.extend(reversed([t for name, t in after if t is not None and _may_use(principal, t, name)]))
    return out


def _may_use(principal: Principal | None, target: Target, name: str | None = None) -> bool:
    """A grant of the name the client used (an alias) covers the model it resolves to."""
    if principal is None:
        return True
    return ((name is not None and principal.may_use(name)) or principal.may_use(target.model)
            or principal.may_use(target.model_id))


def usable_models(principal: Principal | None, upstreams: Upstreams, names: Iterable[str]) -> list[str]:
    """The configured names (models, aliases) that ``principal`` may use, as ``resolve_targets`` judges them."""
    return [name for name in names
            if (target := upstreams.resolve(name)) is not None and _may_use(principal, target, name)]


def _usable(principal: Principal | None, names: Iterable[str]) -> list[str]:
    return [name for name in names if principal is None or principal.may_use(name)]


def _forbidden(principal: Principal | None, model: str) -> LocalReply:
    who = principal.name if principal is not None else "anonymous"
    return LocalReply(403, f"principal {who!r} may not use model {model!r}", "model.forbidden")
