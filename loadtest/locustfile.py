"""The shop's users, for Locust: `make loadtest` runs them headless against a stack (run.py).

- Browser (most users, anonymous): walks the v2 cursor pages of products and views some of them,
  revalidating a product it saw before with If-None-Match, as a browser's cache does.
- Buyer (the `shop` API client): places an order of one product with an Idempotency-Key of its
  own, retries a failed POST with the same key (a 5xx, a 429 after its Retry-After, a lost
  connection), then polls the order until the worker tier has confirmed it
  (reserved -> confirmed). The time from the POST to the confirmation is reported as the
  pseudo-request "ASYNC order reserved -> confirmed".
- Admin (exactly one, the `admin` client): reprices a product it has just read.

Every request is named by its route, so Locust's statistics group them ("/api/v2/products?cursor",
"/api/v1/orders/[id]"). A response the user did not expect is a failure carrying its status and
the start of its body. Tokens come from the environment (FF_LOADTEST_SHOP_TOKEN,
FF_LOADTEST_ADMIN_TOKEN), never from the command line.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
import uuid

from locust import HttpUser, between, task
from locust.exception import StopUser

PAGE_SIZE = 20
# A buyer orders only products that can take many orders, so a short stock is rare.
MIN_STOCK_TO_ORDER = 100
POST_ATTEMPTS = 4
RETRY_AFTER_CAP = 5.0
CONFIRM_WITHIN = 30.0
POLL_EVERY = 1.0
TOKEN_VARIABLES = {"shop": "FF_LOADTEST_SHOP_TOKEN", "admin": "FF_LOADTEST_ADMIN_TOKEN"}


def _take_tokens() -> dict[str, str]:
    # Taken out of the environment, so nothing this process starts inherits them.
    missing = [variable for variable in TOKEN_VARIABLES.values() if not os.environ.get(variable)]
    if missing:
        sys.exit(
            f"loadtest/locustfile.py: {' and '.join(missing)} not set; run it with"
            " `make loadtest`, which reads the tokens from the stack's vault"
        )
    return {client: os.environ.pop(variable) for client, variable in TOKEN_VARIABLES.items()}


TOKENS = _take_tokens()


def _describe(response) -> str:
    """A failure's message: status and the start of the body (never a request header)."""
    if response.status_code == 0:
        return f"no response: {type(response.error).__name__}"
    body = " ".join(response.text[:160].split())
    return f"{response.status_code} {body}"


def _retry_after(response, attempt: int) -> float:
    header = response.headers.get("Retry-After", "") if response.status_code else ""
    if header.isdigit():
        return min(float(header), RETRY_AFTER_CAP)
    return min(0.25 * 2**attempt, RETRY_AFTER_CAP) * random.uniform(0.5, 1.0)  # noqa: S311


class ShopUser(HttpUser):
    abstract = True
    client_name: str | None = None

    def on_start(self) -> None:
        if self.client_name is not None:
            self.client.headers["Authorization"] = f"Bearer {TOKENS[self.client_name]}"

    def product_page(self, cursor: str | None) -> dict | None:
        """One v2 page (the first, or the one after `cursor`); None if it failed."""
        params = {"limit": PAGE_SIZE}
        if cursor:
            params["cursor"] = cursor
        name = "/api/v2/products?cursor" if cursor else "/api/v2/products"
        with self.client.get(
            "/api/v2/products", params=params, name=name, catch_response=True
        ) as response:
            try:
                body = response.json() if response.status_code == 200 else None
                items, next_cursor = body["items"], body["next_cursor"]
            except (ValueError, TypeError, KeyError):
                response.failure(_describe(response))
                return None
            if not isinstance(items, list) or not (
                next_cursor is None or isinstance(next_cursor, str)
            ):
                response.failure(f"200 but not a page: {_describe(response)}")
                return None
            response.success()
            return body

    def product(self, product_id: int, etag: str | None = None):
        """A product's view; a 304 answers a revalidation. Returns the response if it succeeded."""
        headers = {"If-None-Match": etag} if etag else {}
        with self.client.get(
            f"/api/v2/products/{product_id}",
            name="/api/v2/products/[id]",
            headers=headers,
            catch_response=True,
        ) as response:
            if response.status_code == 200 or (etag and response.status_code == 304):
                response.success()
                return response
            response.failure(_describe(response))
            return None


class Browser(ShopUser):
    """An anonymous shopper: pages through the catalogue, opens some products."""

    weight = 8
    wait_time = between(1, 3)

    def on_start(self) -> None:
        super().on_start()
        self.seen: dict[int, str] = {}

    @task(3)
    def walk_catalogue(self) -> None:
        cursor = None
        for _ in range(random.randint(1, 5)):  # noqa: S311
            page = self.product_page(cursor)
            if page is None:
                return
            for item in random.sample(page["items"], min(2, len(page["items"]))):
                response = self.product(item["id"])
                if response is not None and response.headers.get("ETag"):
                    self.seen[item["id"]] = response.headers["ETag"]
            cursor = page["next_cursor"]
            if cursor is None:
                return
            time.sleep(random.uniform(0.2, 1.0))  # noqa: S311

    @task(1)
    def revisit_product(self) -> None:
        if self.seen:
            product_id, etag = random.choice(list(self.seen.items()))  # noqa: S311
            self.product(product_id, etag)


class Buyer(ShopUser):
    """The shop's checkout: one careful client placing orders and waiting for confirmation."""

    weight = 2
    wait_time = between(2, 5)
    client_name = "shop"

    def on_start(self) -> None:
        super().on_start()
        self.catalogue: list[int] = []

    def choose_product(self) -> int | None:
        if not self.catalogue:
            page = self.product_page(None)
            if page is None:
                return None
            self.catalogue = [
                item["id"] for item in page["items"] if item.get("stock", 0) >= MIN_STOCK_TO_ORDER
            ]
            if not self.catalogue:
                logging.warning(
                    "buyer stops: no product on the first page has %d in stock", MIN_STOCK_TO_ORDER
                )
                raise StopUser()
        return random.choice(self.catalogue)  # noqa: S311

    @task
    def place_and_follow_order(self) -> None:
        product_id = self.choose_product()
        if product_id is None:
            return
        placed = time.monotonic()
        order = self.place_order(product_id)
        if order is not None:
            self.wait_for_confirmation(order["id"], placed)

    def place_order(self, product_id: int) -> dict | None:
        """POST the order with one Idempotency-Key, retried with the same key; the order or None."""
        key = uuid.uuid4().hex
        body = {"items": [{"product_id": product_id, "quantity": 1}]}
        for attempt in range(POST_ATTEMPTS):
            name = "/api/v1/orders" if attempt == 0 else "/api/v1/orders [retry]"
            with self.client.post(
                "/api/v1/orders",
                json=body,
                headers={"Idempotency-Key": key},
                name=name,
                catch_response=True,
            ) as response:
                if response.status_code == 201:
                    try:
                        order = response.json()
                        order_id = order["id"]
                    except (ValueError, KeyError, TypeError):
                        response.failure(f"201 without an order id: {_describe(response)}")
                        return None
                    response.success()
                    return order if isinstance(order_id, str) else None
                if response.status_code == 409:
                    # Short of stock: the shop tells its customer; nothing to retry or follow.
                    response.success()
                    if product_id in self.catalogue:
                        self.catalogue.remove(product_id)
                    return None
                response.failure(_describe(response))
                retryable = response.status_code in (0, 429) or response.status_code >= 500
                if not retryable:
                    return None
                pause = _retry_after(response, attempt)
            if attempt + 1 < POST_ATTEMPTS:
                time.sleep(pause)
        return None

    def wait_for_confirmation(self, order_id: str, placed: float) -> None:
        """Poll the order until it is confirmed; report the time that took as its own entry."""
        deadline = placed + CONFIRM_WITHIN
        status = "reserved"
        while time.monotonic() < deadline:
            time.sleep(POLL_EVERY)
            with self.client.get(
                f"/api/v1/orders/{order_id}", name="/api/v1/orders/[id]", catch_response=True
            ) as response:
                try:
                    status = response.json()["status"] if response.status_code == 200 else None
                except (ValueError, KeyError, TypeError):
                    status = None
                if status is None:
                    response.failure(_describe(response))
                    continue
                response.success()
            if status == "confirmed":
                self.report_confirmation(placed, None)
                return
            if status != "reserved":
                break
        self.report_confirmation(
            placed, RuntimeError(f"order {status} after {time.monotonic() - placed:.0f} s")
        )

    def report_confirmation(self, placed: float, failure: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="ASYNC",
            name="order reserved -> confirmed",
            response_time=(time.monotonic() - placed) * 1000,
            response_length=0,
            exception=failure,
            context={},
        )


class Admin(ShopUser):
    """The catalogue manager: one, whatever the number of users; reprices what it reads."""

    fixed_count = 1
    wait_time = between(3, 8)
    client_name = "admin"

    @task
    def reprice_product(self) -> None:
        page = self.product_page(None)
        if not page or not page["items"]:
            return
        product_id = random.choice(page["items"])["id"]  # noqa: S311
        response = self.product(product_id)
        if response is None:
            return
        current = response.json()
        # PUT replaces the whole product: send it back as read, with a new price. Its stock too,
        # so an order placed between the read and the PUT is undone in the count (PUT has no
        # If-Match); the seeded stock is far above what a run orders.
        replacement = {
            field: current[field] for field in ("sku", "name", "description", "stock")
        } | {"price_cents": random.randint(100, 99_999)}  # noqa: S311
        with self.client.put(
            f"/api/v1/products/{product_id}",
            json=replacement,
            name="/api/v1/products/[id]",
            catch_response=True,
        ) as put:
            if put.status_code == 200:
                put.success()
            else:
                put.failure(_describe(put))
