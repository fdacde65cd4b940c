"""The worker tier's figure: a steady order load through the stack, each order then confirmed
by a worker through the queue; confirmations per second end to end and the queue lag (order
committed to order confirmed) from the orders' own timestamps in PostgreSQL. Also the rate at
which the workers drained the backlog the order scenario left, their capacity."""

from __future__ import annotations

import time

from stacklib import OrderLoad, Stack, StackError, log, wait_for

SETTLE_SECONDS = 900
ORDER_FIGURES = (
    "SELECT count(*), count(*) FILTER (WHERE status = 'confirmed'),"
    " extract(epoch FROM max(confirmed_at) - min(created_at)),"
    " extract(epoch FROM max(confirmed_at) - min(confirmed_at)),"
    " percentile_cont(array[0.5, 0.99]) WITHIN GROUP"
    " (ORDER BY extract(epoch FROM confirmed_at - created_at)),"
    " extract(epoch FROM max(confirmed_at - created_at))"
    " FROM orders"
)


def _reserved(stack: Stack) -> int:
    return int(stack.psql(stack.leader(), "SELECT count(*) FROM orders WHERE status = 'reserved'"))


def _settle(stack: Stack, what: str) -> None:
    """Until every order placed so far is confirmed (or expired), at most SETTLE_SECONDS."""
    log(f"waiting for the workers to confirm {what}")
    wait_for(lambda: _reserved(stack), lambda left: left == 0, what, SETTLE_SECONDS, 2)


def _orders(stack: Stack, since: str, until: str | None = None) -> dict:
    """Counts, spans and lag quantiles of the orders created from `since` (to `until`):
    timestamps PostgreSQL itself gave."""
    where = f"created_at >= '{since}'" + (f" AND created_at < '{until}'" if until else "")
    row = stack.psql(stack.leader(), f"{ORDER_FIGURES} WHERE {where}")
    count, confirmed, span, confirming, quantiles, longest = row.split("|")
    p50, p99 = (float(q) for q in quantiles.strip("{}").split(","))
    return {
        "orders": int(count),
        "confirmed": int(confirmed),
        "span_s": float(span),
        "confirming_s": float(confirming),
        "lag_p50_ms": round(p50 * 1000, 1),
        "lag_p99_ms": round(p99 * 1000, 1),
        "lag_max_ms": round(float(longest) * 1000, 1),
    }


def now(stack: Stack) -> str:
    """PostgreSQL's clock, which stamps the orders."""
    return stack.psql(stack.leader(), "SELECT now()")


def worker_figure(
    stack: Stack, product_id: int, rate: float, seconds: int, scenarios_started: str
) -> dict:
    """The steady load's figures, and the drain of the orders the scenarios placed since
    scenarios_started (an earlier run's orders on a reused stack are not counted)."""
    _settle(stack, "the order scenario's backlog")
    started = now(stack)
    backlog = _orders(stack, scenarios_started, started)
    log(f"steady order load: {rate:g} orders/s for {seconds} s")
    with OrderLoad(
        stack.url, stack.session("shop"), product_id, rate=rate, seconds=seconds,
        limit=int(rate * seconds),
    ) as load:  # fmt: skip
        time.sleep(seconds)
    if load.failed:
        raise StackError(f"orders failed under the steady load: {load.summary()}")
    _settle(stack, "the steady load's orders")
    steady = _orders(stack, started)
    if steady["confirmed"] != len(load.acknowledged):
        raise StackError(
            f"{len(load.acknowledged)} orders acknowledged, {steady['confirmed']} confirmed"
        )
    figure = {
        "offered_rate": rate,
        "seconds": seconds,
        **steady,
        "confirmations_per_s": round(steady["confirmed"] / steady["span_s"], 1),
        "backlog_orders": backlog["confirmed"],
        "backlog_drain_per_s": round(backlog["confirmed"] / backlog["confirming_s"], 1),
    }
    log(
        f"  {figure['confirmations_per_s']:.1f} confirmations/s, lag p50 "
        f"{figure['lag_p50_ms']:.0f} ms, p99 {figure['lag_p99_ms']:.0f} ms; backlog drained at "
        f"{figure['backlog_drain_per_s']:.0f}/s"
    )
    return figure
