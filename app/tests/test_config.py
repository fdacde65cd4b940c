"""Configuration from FLASKFLEET_* variables; bad values stop start-up with a clear message."""

import pytest
from flaskfleet import create_app
from flaskfleet.config import ConfigError, Settings

BASE = {"FLASKFLEET_DATABASE_URL": "postgresql://app@127.0.0.1:5432/flaskfleet"}


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
        ("FLASKFLEET_RATELIMIT_DEFAULT", "as fast as you like"),
        ("FLASKFLEET_READ_YOUR_WRITES_SECONDS", "soon"),
        ("FLASKFLEET_RELEASE", "v1\nX-Evil: 1"),
    ],
)
def test_bad_value_names_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        create_app({**BASE, variable: value})


def test_database_url_is_required():
    with pytest.raises(ConfigError, match="FLASKFLEET_DATABASE_URL"):
        Settings.from_env({})


def test_pool_bounds_are_checked():
    with pytest.raises(ConfigError, match="FLASKFLEET_DB_POOL_MIN must not exceed"):
        Settings.from_env({**BASE, "FLASKFLEET_DB_POOL_MIN": "5", "FLASKFLEET_DB_POOL_MAX": "2"})


def test_values_are_parsed():
    settings = Settings.from_env(
        {
            **BASE,
            "FLASKFLEET_API_TOKENS": " one, two ,,three ",
            "FLASKFLEET_DB_POOL_MAX": "4",
            "FLASKFLEET_REDIS_URL": "",
            "UNRELATED": "ignored",
        }
    )
    assert [token.get_secret_value() for token in settings.api_tokens] == ["one", "two", "three"]
    assert settings.db_pool_max == 4
    assert settings.redis_url is None
    assert settings.database_replica_url is None
    assert settings.release == "0.1.0"
    # Secrets stay out of reprs and logs.
    assert "127.0.0.1" not in repr(settings)


def test_app_starts_without_servers_and_reports_them_down():
    app = create_app({**BASE, "FLASKFLEET_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["replica"] == {"status": "not_configured"}
