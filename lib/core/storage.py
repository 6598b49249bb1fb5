"""Study storage URLs without Optuna: the default SQLite file of a run, the in-memory marker, the heartbeat
interval, and a URL with its password hidden. Light (SQLAlchemy is imported only to parse a URL), so the
scripts' option parsers can use it before any heavy import."""
from pathlib import Path

HEARTBEAT_INTERVAL_S = 30
MEMORY = "memory"


def default_storage(run_dir: str | Path) -> str:
    """SQLite URL of the study database inside a run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def safe_url(url: str | None) -> str | None:
    """A storage URL with its password hidden (for logs and summaries)."""
    if not url or "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def with_installed_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, we pin psycopg2."""
    import importlib.util

    from sqlalchemy.engine import make_url
    parsed = make_url(url)
    if parsed.drivername != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
