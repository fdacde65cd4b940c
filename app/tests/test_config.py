"""Configuration from FLASKFLEET_* variables; bad values stop start-up with a clear message."""

import json
import ssl

import psycopg2.extensions
import pytest
from flaskfleet import create_app
from flaskfleet.config import ConfigError, Settings
from flaskfleet.tasks import make_celery

BASE = {
    "FLASKFLEET_DATABASE_URL": "postgresql://app@127.0.0.1:5432/flaskfleet",
    "FLASKFLEET_SECRET_KEY": "a-secret-key-of-some-length",
}
HASH = "0123456789abcdef" * 4


def clients(*overrides: dict) -> str:
    """FLASKFLEET_API_CLIENTS with one valid client per override applied to it."""
    client = {"name": "shop", "token_sha256": HASH, "scopes": ["orders:write"]}
    return json.dumps([{**client, **override} for override in overrides])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLASKFLEET_DATABASE_URL", "definitely not a dsn"),
        ("FLASKFLEET_DATABASE_REPLICA_URL", "nope"),
        ("FLASKFLEET_REDIS_URL", "http://127.0.0.1:6379"),
        ("FLASKFLEET_DB_POOL_MAX", "many"),
        ("FLASKFLEET_DB_POOL_MAX", "0"),
        ("FLASKFLEET_DB_POOL_MIN", "-1"),
        ("FLASKFLEET_CACHE_TIMEOUT", "1.5"),
        ("FLASKFLEET_RATELIMIT_PER_CLIENT", "as fast as you like"),
        ("FLASKFLEET_READ_YOUR_WRITES_SECONDS", "soon"),
        ("FLASKFLEET_MAX_PAGE_OFFSET", "-1"),
        ("FLASKFLEET_RELEASE", "v1\nX-Evil: 1"),
        ("FLASKFLEET_SECRET_KEY", "too-short"),
        ("FLASKFLEET_BROKER_URL", "amqp://guest@127.0.0.1//"),
        ("FLASKFLEET_BROKER_URL", "unix:///run/redis.sock"),
        ("FLASKFLEET_BROKER_URL", "rediss://u:p@queue:6380/0?ssl_cert_reqs=none"),
        ("FLASKFLEET_TASK_MAX_RETRIES", "-1"),
        ("FLASKFLEET_TASK_VISIBILITY_TIMEOUT", "0"),
        ("FLASKFLEET_ORDER_RESERVATION_SECONDS", "soon"),
        ("FLASKFLEET_REPORT_MAX_DAYS", "0"),
        ("FLASKFLEET_WORKER_METRICS_PORT", "65536"),
        ("FLASKFLEET_WORKER_METRICS_ADDRESS", "localhost"),
        # A task allowed to run past the visibility timeout would run twice at once.
        ("FLASKFLEET_TASK_TIME_LIMIT", "3600"),
        ("FLASKFLEET_DB_STATEMENT_TIMEOUT", "0"),
        ("FLASKFLEET_CACHE_MISSING_TIMEOUT", "0"),
        ("FLASKFLEET_BREAKER_FAILURES", "0"),
        ("FLASKFLEET_BREAKER_RESET_SECONDS", "-1"),
        # A cool-down that could never grow to its cap.
        ("FLASKFLEET_BREAKER_RESET_SECONDS", "120"),
    ],
)
def test_bad_value_names_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        create_app({**BASE, variable: value})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not json", r"FLASKFLEET_API_CLIENTS: .*not valid JSON"),
        ('{"name": "shop"}', r"FLASKFLEET_API_CLIENTS: .*JSON list"),
        (clients({"name": "Shop"}), r"FLASKFLEET_API_CLIENTS\[0\]\.name: .*pattern"),
        (clients({"name": "x" * 33}), r"\[0\]\.name: .*pattern"),
        (clients({"name": "9lives"}), r"\[0\]\.name: .*pattern"),
        (clients({"name": 7}), r"\[0\]\.name: .*string"),
        (clients({"name": "legacy"}), r"\[0\]\.name: .*reserved"),
        (clients({}, {"name": "shop", "token_sha256": "f" * 64}), r"repeated: shop"),
        (clients({}, {"name": "other"}), r"same token_sha256"),
        (clients({"token_sha256": HASH[:-1]}), r"\[0\]\.token_sha256: .*pattern"),
        (clients({"token_sha256": HASH.upper()}), r"\[0\]\.token_sha256: .*pattern"),
        (clients({"scopes": ["orders:delete"]}), r"\[0\]\.scopes\[0\]: .*'orders:read'"),
        (clients({"scopes": []}), r"\[0\]\.scopes: .*at least 1"),
        (clients({"token": "plain"}), r"\[0\]\.token: .*not permitted"),
    ],
)
def test_bad_api_clients_are_refused(value, problem):
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env({**BASE, "FLASKFLEET_API_CLIENTS": value})


def test_without_a_secret_key_read_your_writes_is_off(capfd):
    """Nothing could sign its cookie. The database URL alone (a migration run) still works."""
    settings = Settings.from_env({"FLASKFLEET_DATABASE_URL": BASE["FLASKFLEET_DATABASE_URL"]})
    assert settings.read_your_writes_seconds == 10
    assert settings.read_your_writes_window == 0
    create_app({"FLASKFLEET_DATABASE_URL": BASE["FLASKFLEET_DATABASE_URL"]})
    assert "read-your-writes is off" in capfd.readouterr().err
    assert Settings.from_env(BASE).read_your_writes_window == 10


def test_database_url_is_required():
    with pytest.raises(ConfigError, match="FLASKFLEET_DATABASE_URL"):
        Settings.from_env({})


def test_multi_host_urls_name_every_database_host():
    """As the app role writes them: every PostgreSQL host, libpq picking the one that leads
    (writes) or a standby (reads), over verified TLS."""
    hosts = "10.0.0.30:5432,10.0.0.31:5432,[fd00::32]:5432"
    tls = "sslmode=verify-full&sslrootcert=/etc/flaskfleet/tls/ca.crt"
    settings = Settings.from_env(
        {
            **BASE,
            "FLASKFLEET_DATABASE_URL": f"postgresql://flaskfleet:pw@{hosts}/flaskfleet"
            f"?target_session_attrs=read-write&{tls}",
            "FLASKFLEET_DATABASE_REPLICA_URL": f"postgresql://flaskfleet:pw@{hosts}/flaskfleet"
            f"?target_session_attrs=standby&{tls}",
        }
    )
    primary = psycopg2.extensions.parse_dsn(settings.database_url.get_secret_value())
    replica = psycopg2.extensions.parse_dsn(settings.database_replica_url.get_secret_value())
    assert (primary["host"], primary["port"]) == ("10.0.0.30,10.0.0.31,fd00::32", "5432,5432,5432")
    assert primary["target_session_attrs"] == "read-write"
    assert replica["target_session_attrs"] == "standby"
    assert replica["sslmode"] == "verify-full"


@pytest.mark.parametrize("variable", ["FLASKFLEET_DATABASE_URL", "FLASKFLEET_DATABASE_REPLICA_URL"])
def test_a_target_session_attrs_libpq_would_refuse_stops_start_up(variable):
    url = "postgresql://app@10.0.0.30:5432,10.0.0.31:5432/flaskfleet?target_session_attrs=leader"
    with pytest.raises(ConfigError, match=rf"{variable}: .*'leader' is not one of .*standby"):
        Settings.from_env({**BASE, variable: url})


def test_pool_bounds_are_checked():
    with pytest.raises(ConfigError, match="FLASKFLEET_DB_POOL_MIN must not exceed"):
        Settings.from_env({**BASE, "FLASKFLEET_DB_POOL_MIN": "5", "FLASKFLEET_DB_POOL_MAX": "2"})


def test_values_are_parsed():
    settings = Settings.from_env(
        {
            **BASE,
            "FLASKFLEET_API_CLIENTS": clients(
                {}, {"name": "admin_1", "token_sha256": "f" * 64, "scopes": ["orders:read"] * 2}
            ),
            "FLASKFLEET_DB_POOL_MAX": "4",
            "FLASKFLEET_REDIS_URL": "",
            "UNRELATED": "ignored",
        }
    )
    assert [(client.name, client.scopes) for client in settings.api_clients] == [
        ("shop", {"orders:write"}),
        ("admin_1", {"orders:read"}),
    ]
    assert settings.ratelimit_per_client == "50 per second"
    assert settings.max_page_offset == 10_000
    assert settings.db_pool_max == 4
    assert settings.redis_url is None
    assert settings.database_replica_url is None
    assert settings.release == "0.1.0"
    # Secrets stay out of reprs and logs.
    assert BASE["FLASKFLEET_DATABASE_URL"] not in repr(settings)
    assert HASH not in repr(settings)
    assert "a-secret-key" not in repr(settings)


def test_worker_tier_defaults_and_broker():
    settings = Settings.from_env(BASE)
    assert settings.broker_url is None
    assert (settings.task_visibility_timeout, settings.task_time_limit) == (3600, 300)
    assert settings.task_max_retries == 5
    assert settings.order_reservation_seconds == 900
    assert settings.report_max_days == 366
    assert (settings.worker_metrics_address, settings.worker_metrics_port) == ("127.0.0.1", 9808)
    # A worker cannot run without a queue; the app can (its tasks wait in the outbox).
    with pytest.raises(ConfigError, match="FLASKFLEET_BROKER_URL"):
        make_celery(settings, worker=True)
    broker = {
        **BASE,
        "FLASKFLEET_BROKER_URL": "rediss://flaskfleet:s3cr3t-pw@queue.internal:6380/0",
    }
    celery = make_celery(Settings.from_env(broker), worker=False)
    assert celery.conf.broker_transport_options["global_keyprefix"] == "ffq:"
    assert celery.conf.redbeat_key_prefix.startswith("ffq:")
    assert "s3cr3t-pw" not in repr(Settings.from_env(broker))
    # TLS verifies the server's certificate, against the CA the URL names if it names one.
    assert celery.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    broker["FLASKFLEET_BROKER_URL"] += "?ssl_ca_certs=/etc/flaskfleet/ca.pem"
    celery = make_celery(Settings.from_env(broker), worker=True)
    assert celery.connection_for_write().ssl == {"ssl_ca_certs": "/etc/flaskfleet/ca.pem"}


def test_replaced_variables_are_reported_not_fatal(capfd):
    create_app({**BASE, "FLASKFLEET_API_TOKENS": "t", "FLASKFLEET_RATELIMIT_DEFAULT": "1/s"})
    warned = capfd.readouterr().err
    assert "FLASKFLEET_API_TOKENS" in warned
    assert "FLASKFLEET_RATELIMIT_DEFAULT" in warned


def test_app_starts_without_servers_and_reports_them_down():
    app = create_app({**BASE, "FLASKFLEET_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["replica"] == {"status": "not_configured"}
