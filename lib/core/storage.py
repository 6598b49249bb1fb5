"""Study storage URLs without Optuna: the default SQLite file of a run, the in-memory marker, the heartbeat
interval, a URL with its password hidden, and the check that a storage can be used. Light (SQLAlchemy is
imported only to parse or try a URL), so the scripts' option checks can use it before any heavy import."""
import re
from pathlib import Path

from lib.core.errors import DataError

HEARTBEAT_INTERVAL_S = 30
MEMORY = "memory"


def default_storage(run_dir: str | Path) -> str:
    """SQLite URL of the study database inside a run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def safe_url(url: str | None) -> str | None:
    """A storage URL with its password hidden, in every log line and every file the toolkit writes.

    A URL SQLAlchemy cannot parse is masked by pattern (``scheme://user:***@host``); idempotent.
    """
    if not url or "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        parsed = make_url(url)
    except ArgumentError:
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)
    query = {k: ("***" if re.search(SECRET_KEYS, k, re.I) else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


SECRET_KEYS = r"pass|pwd|secret|token"
SUPPORTED = ("sqlite", "postgresql", "mysql")
CONNECT_TIMEOUT_S = 5
DRIVER_HINT = {"postgresql": "pip install psycopg2-binary (requirements.txt has it)",
               "mysql": "pip install mysqlclient, or pymysql with a mysql+pymysql:// URL"}


def check_storage(url: str | None, option: str = "--storage") -> None:
    """One line naming the URL (password hidden) when a study storage cannot be used: not a URL, a database
    other than SQLite/PostgreSQL/MySQL, a driver that is not installed, a server that does not answer, an
    SQLite file in a folder that does not exist. Connects once to a server; creates nothing."""
    if url is None or url == MEMORY:
        return
    from sqlalchemy import create_engine, exc
    from sqlalchemy.engine import make_url
    shown = f"{option} {safe_url(url)}"
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise DataError(f"{shown}: not a database URL (e.g. sqlite:////abs/path/study.db or "
                        f"postgresql://user:password@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise DataError(f"{shown}: unsupported database '{backend}' (use one of {', '.join(SUPPORTED)})")
    if backend == "sqlite":
        _check_sqlite(parsed.database, shown)
        return
    try:
        engine = create_engine(with_installed_driver(url), connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    except ImportError as error:
        raise DataError(f"{shown}: the database driver is not installed ({error.name or error}); "
                        f"{DRIVER_HINT[backend]}") from None
    except exc.ArgumentError as error:
        raise DataError(f"{shown}: not usable ({str(error).splitlines()[0][:160]})") from None
    try:
        with engine.connect():
            pass
    except exc.DBAPIError as error:
        reason = next((line.strip() for line in str(error.orig).splitlines() if line.strip()), type(error).__name__)
        raise DataError(f"{shown}: cannot connect ({reason[:200]})") from None
    finally:
        engine.dispose()


def _check_sqlite(database: str | None, shown: str) -> None:
    """An SQLite study file: a path (not in memory) whose folder exists."""
    if not database or database == ":memory:":
        raise DataError(f"{shown}: an in-memory SQLite database cannot hold a study across workers; give a file")
    folder = Path(database).expanduser().parent
    if not folder.is_dir():
        raise DataError(f"{shown}: folder {folder} does not exist")


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
