"""Fixtures of the worker scenario: its hosts, SQL on the primary, Redis as the queue's admin,
and placing an order through the app's own code with the queue's producer credentials."""

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import (
    PROJECT_DIR,
    eventually,
    exposure,
    host,
    journal,
    private_ip,
    run_playbook,
    run_role_with,
)

__all__ = ["eventually", "exposure", "journal", "run_playbook", "run_role_with"]
SCENARIO_DIR = Path(__file__).resolve().parent.parent
INVENTORY_VARS = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"][
    "inventory"
]["group_vars"]["all"]
SECRETS = {
    name: value
    for name, value in INVENTORY_VARS.items()
    if name.startswith("vault_") or (name.endswith("_password") and "{{" not in value)
}
ADMIN_TOKEN = "molecule-worker-admin-token"  # noqa: S105 -- a test-only token
CA_FILE = "/etc/flaskfleet/tls/ca.crt"
UNITS = ("flaskfleet-worker.service", "flaskfleet-beat.service")


@pytest.fixture(scope="session")
def worker():
    return host("worker-worker1")


@pytest.fixture(scope="session")
def queue():
    return host("worker-queue")


@pytest.fixture(scope="session")
def postgres():
    return host("worker-postgres")


def diagnostics(target):
    return journal(target, *UNITS, lines=60)


def sql(postgres, query):
    """One value or row (|-separated) from the flaskfleet database, as the postgres superuser."""
    return postgres.check_output(
        f"runuser -u postgres -- psql -d flaskfleet -XAtq -c {shlex.quote(query)}"
    )


def redis_admin(queue, *commands):
    """Redis's answers to commands sent as the queue's admin (password on stdin, not argv)."""
    script = "\n".join([f"AUTH admin {SECRETS['vault_queue_admin_password']}", *commands])
    address = private_ip(queue)
    result = queue.run(f"redis-cli --tls --cacert {CA_FILE} -h {address} <<'EOF'\n{script}\nEOF")
    return result.stdout.splitlines()[1:]


PLACE_ORDER = """
import hashlib, json, os, sys
from flaskfleet import create_app
token = os.environ.pop("MOLECULE_ADMIN_TOKEN")
os.environ["FLASKFLEET_API_CLIENTS"] = json.dumps([{
    "name": "molecule", "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    "scopes": ["products:write", "orders:write", "orders:read"]}])
client = create_app().test_client()
auth = {"Authorization": "Bearer " + token}
product = client.post("/api/v1/products", headers=auth, json={
    "sku": sys.argv[1], "name": "molecule", "price_cents": 700, "stock": 5})
assert product.status_code == 201, product.get_data(as_text=True)
order = client.post("/api/v1/orders", headers=auth, json={
    "items": [{"product_id": product.json["id"], "quantity": 2}]})
assert order.status_code in (201, 202), order.get_data(as_text=True)
print(json.dumps(order.json))
"""


@pytest.fixture(scope="session")
def place_order(worker, queue):
    """place_order(sku) -> the order the app's API returned: a product and an order made with
    the app's own code from the worker host's release, which publishes the confirmation task
    to the queue as the producer user (the app's), not the worker's."""
    producer_url = (
        f"redis://flaskfleet_producer:{SECRETS['vault_queue_producer_password']}"
        f"@{private_ip(queue)}:6379/0?ssl_cert_reqs=required&ssl_ca_certs={CA_FILE}"
    )
    env = f'FLASKFLEET_BROKER_URL="{producer_url}"\nMOLECULE_ADMIN_TOKEN="{ADMIN_TOKEN}"\n'
    worker.check_output(
        "install -m 0600 /dev/null /root/producer.env"
        f" && cat > /root/producer.env <<'EOF'\n{env}EOF"
    )

    def place(sku):
        result = worker.run(
            "systemd-run --wait --pipe --collect --quiet --uid=flaskfleet --gid=flaskfleet"
            " --property=EnvironmentFile=/etc/flaskfleet/worker.env"
            " --property=EnvironmentFile=/root/producer.env"
            f" /opt/flaskfleet/current/venv/bin/python -c {shlex.quote(PLACE_ORDER)} {sku}"
        )
        assert result.rc == 0, result.stdout + result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    return place


__all__ += ["CA_FILE", "PROJECT_DIR", "SECRETS", "UNITS", "diagnostics", "redis_admin", "sql"]
