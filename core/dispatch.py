"""The attempts of one request: a deployment per attempt, retries and failover as each model's retry policy says.

Everything here happens before the first byte reaches the client (docs/request-path.md, step 4); the
deployments' balancing and health live in core.balancing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httpx

from core import observe
from core.balancing import Deployment, Event, backoff_seconds, retry_after_seconds
from core.errors import RequestError
from core.filter import LocalReply
from core.flow import Flow
from core.providers import Adapter

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from core.chain import Chain
    from core.runtime import Runtime
    from core.target import Target

log = logging.getLogger("outerloop.dispatch")

# Failures where the request never left: another deployment can take it as if it were the first attempt.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _remaining(deadline: asyncio.Timeout) -> float:
    when = deadline.when()
    return float("inf") if when is None else when - asyncio.get_running_loop().time()


def _note(flow: Flow, event: Event | None) -> None:
    """An ejection or probe on the request's annotations (its span, the metrics observer)."""
    if event is not None:
        key = f"outlier.{event.kind}"
        previous = flow.annotations.get(key)
        flow.annotations[key] = f"{previous},{event.model}" if previous else event.model


async def dispatch(runtime: Runtime, flow: Flow, chain: Chain, deadline: asyncio.Timeout,
                   span: Span | None = None) -> tuple[httpx.Response, Adapter, Deployment] | LocalReply:
    """Each model of ``flow.targets`` in turn, on its deployments, as its retry policy says.

    A connect failure (nothing was sent) moves to another healthy deployment of the model, policy or not.
    A LocalReply of ``on_upstream_request`` stops the request before any attempt; after one, it skips the
    model (noted in ``flow.annotations["skipped"]``).
    A status in the policy's ``on_status`` (a reset counts as 502, a timeout as 504) is retried up to
    ``max_attempts`` after a backoff or the answer's Retry-After, then the next model is tried; a wait
    that does not fit under the deadline moves to the next model at once. The last attempt's answer (or
    transport error) is what the client gets. Nothing here has reached the client yet.
    """
    balancers = runtime.balancers
    failed: httpx.Response | None = None
    failed_by: Deployment | None = None
    failed_target: Target | None = None
    error: httpx.TransportError | None = None
    try:
        for target in flow.targets:
            balancer = balancers[target.entry]
            policy = balancer.policy
            tried: list[Deployment] = []
            tries = 0
            counted = False  # a connect failure of this round was counted as an attempt of the model
            again: float | None = None  # a retry of this model is due after this many seconds
            while True:
                dep, event = balancer.pick(tried)
                if dep is None:
                    if again is None or again > _remaining(deadline):
                        break
                    await asyncio.sleep(again)
                    again, tried, counted = None, [], False
                    continue
                _note(flow, event)
                tried.append(dep)
                # A wildcard entry's deployment asked for the client's own id.
                attempt = target.serving(dep.target)
                reply = await chain.on_upstream_request(flow, attempt)
                if reply is not None:
                    if flow.attempts == 0:
                        return reply
                    # After an attempt failed, a filter refusing this model (a rate cap of a fallback) skips
                    # it: the next target is tried, and the last answer stays the client's if none serves.
                    skipped = flow.annotations.get("skipped")
                    note = f"{attempt.model}:{reply.details}"
                    flow.annotations["skipped"] = f"{skipped},{note}" if skipped else note
                    flow.details = None
                    log.info("request %s: model %s skipped: %s", flow.request_id, attempt.model, reply.details)
                    break
                if failed is not None:
                    await failed.aclose()
                    failed = failed_by = None
                flow.attempts += 1
                outcome = await _attempt(runtime, flow, dep, attempt, span)
                if isinstance(outcome, httpx.TransportError):
                    error = outcome
                    _note(flow, balancer.failed(dep))
                    if isinstance(outcome, _NOTHING_SENT):
                        # Another healthy deployment first; a retry of the model once none is left.
                        if not counted:
                            counted, tries = True, tries + 1
                            if policy.on_connect_error and tries < policy.max_attempts:
                                again = backoff_seconds(policy, tries)
                        continue
                    status = 504 if isinstance(outcome, httpx.TimeoutException) else 502
                    if status not in policy.on_status:
                        raise outcome
                    retry_after = None
                else:
                    response, adapter = outcome
                    status = response.status_code
                    _note(flow, balancer.failed(dep) if status >= 500 else balancer.succeeded(dep))
                    if status not in policy.on_status:
                        flow.served_by = attempt
                        return response, adapter, dep
                    failed, failed_by, failed_target, error = response, dep, attempt, None
                    dep.outstanding -= 1
                    retry_after = (retry_after_seconds(response.headers.get("retry-after"))
                                   if policy.respect_retry_after else None)
                tries += 1
                if tries >= policy.max_attempts:
                    break
                again = retry_after if retry_after is not None else backoff_seconds(policy, tries)
                tried, counted = [], False
                if again > _remaining(deadline):
                    break
                log.info("request %s: model %s answered %s; retry %d in %.3fs", flow.request_id, target.model,
                         status, tries, again)
                await asyncio.sleep(again)
                again = None
        if failed is not None and failed_by is not None and failed_target is not None:
            # Every model failed: the last answer goes to the client as it is (its Retry-After kept).
            flow.served_by = failed_target
            failed_by.outstanding += 1
            served = failed, runtime.adapter(flow, failed_target), failed_by
            failed = None
            return served
        if error is not None:
            raise error
        raise RequestError(503, f"no healthy deployment of {flow.targets[0].model} could be tried (request "
                                f"{flow.request_id})", "upstream.unavailable")
    finally:
        if failed is not None:
            await failed.aclose()
        flow.extra_headers["x-outerloop-attempts"] = str(flow.attempts)


async def _attempt(runtime: Runtime, flow: Flow, dep: Deployment, target: Target,
                   span: Span | None) -> tuple[httpx.Response, Adapter] | httpx.TransportError:
    """One upstream call to ``target`` on deployment ``dep``, as its own span: the answer's headers, or why
    there were none."""
    adapter = runtime.adapter(flow, target)
    request = adapter.request(flow, target)
    request.extensions["timeout"] = target.timeouts
    attempt_span = None
    if span is not None and runtime.tracer is not None:
        attempt_span = observe.start_attempt_span(runtime.tracer, span, flow.attempts, target.model,
                                                  dep.host)
        observe.propagate(span, request.headers)
    dep.outstanding += 1
    try:
        response = await target.upstream.transport.handle_async_request(request)
    except httpx.TransportError as exc:
        dep.outstanding -= 1
        log.warning("request %s: attempt %d: model %s at %s failed: %s: %s", flow.request_id, flow.attempts,
                    target.model, dep.host, type(exc).__name__, exc)
        if attempt_span is not None:
            observe.end_attempt_span(attempt_span, None, type(exc).__name__)
        return exc
    except BaseException:
        dep.outstanding -= 1
        if attempt_span is not None:
            observe.end_attempt_span(attempt_span, None, "cancelled")
        raise
    if response.status_code >= 400:
        log.warning("request %s: attempt %d: model %s at %s answered %d", flow.request_id, flow.attempts,
                    target.model, dep.host, response.status_code)
    if attempt_span is not None:
        observe.end_attempt_span(attempt_span, response.status_code,
                                 "answered" if response.status_code < 400 else f"http_{response.status_code}")
    return response, adapter
