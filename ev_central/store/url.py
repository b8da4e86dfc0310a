"""Database URLs: ``mysql://user[:password]@host[:port]/database`` and ``sqlite:///path``.

``parse_db_url`` turns the text given to ``--db`` into a :class:`DatabaseURL`, or raises
``ValueError`` with a message that says what is wrong. ``DatabaseURL.redacted()`` is the
form to print: it never shows the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

MYSQL_DEFAULT_PORT = 3306
SCHEMES = ("mysql", "sqlite")
_FORMS = "mysql://user[:password]@host[:port]/database or sqlite:///path/to/file.db"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. For ``sqlite`` only ``path`` is set; for ``mysql`` the rest."""

    scheme: str  # "mysql" or "sqlite"
    path: str = ""  # sqlite: the file, relative to the working directory or absolute
    user: str = ""
    password: str | None = field(default=None, repr=False)
    host: str = ""
    port: int = MYSQL_DEFAULT_PORT
    database: str = ""

    def redacted(self) -> str:
        """The URL with the password shown as ``***``: safe for logs and messages."""
        if self.scheme == "sqlite":
            return "sqlite:///" + quote(self.path, safe="/:")
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":***"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mysql://{auth}@{host}:{self.port}/{quote(self.database, safe='')}"

    def describe(self) -> str:
        """Short human form: ``MySQL ev@db:3306/evcharging`` or ``SQLite /data/ev.db``."""
        if self.scheme == "sqlite":
            return f"SQLite {self.path}"
        return f"MySQL {self.user}@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.redacted()


def parse_db_url(url: str) -> DatabaseURL:
    """Parse a database URL; ``ValueError`` says what is malformed."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty database URL; expected {_FORMS}")
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"database URL {_shown(text)} has no scheme; expected {_FORMS}")
    if scheme == "sqlite":
        return _parse_sqlite(text)
    if scheme == "mysql":
        return _parse_mysql(text)
    raise ValueError(
        f"unknown database URL scheme {scheme!r} in {_shown(text)}; "
        f"supported: {', '.join(SCHEMES)} ({_FORMS})"
    )


def _parse_sqlite(text: str) -> DatabaseURL:
    rest = text[len("sqlite://") :]
    if not rest.startswith("/"):
        raise ValueError(
            f"SQLite URL {text!r} names a host; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(f"SQLite URL {text!r} has a query or fragment; none is supported")
    path = unquote(rest[1:])
    if not path or path.endswith("/"):
        raise ValueError(f"SQLite URL {text!r} names no file")
    return DatabaseURL(scheme="sqlite", path=path)


def _parse_mysql(text: str) -> DatabaseURL:
    shown = _shown(text)
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError(f"MySQL URL {shown} has a query or fragment; none is supported")
    if "@" not in parts.netloc:
        raise ValueError(f"MySQL URL {shown} has no user; expected {_FORMS}")
    if not parts.username:
        raise ValueError(f"MySQL URL {shown} has an empty user name")
    if not parts.hostname:
        raise ValueError(f"MySQL URL {shown} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"MySQL URL {shown} has a bad port (expected 1-65535)") from None
    if port == 0:
        raise ValueError(f"MySQL URL {shown} has a bad port (expected 1-65535)")
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not database:
        raise ValueError(f"MySQL URL {shown} names no database; expected {_FORMS}")
    if "/" in database or len(database) > 64:
        raise ValueError(f"MySQL URL {shown} has a bad database name {database!r}")
    return DatabaseURL(
        scheme="mysql",
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port if port is not None else MYSQL_DEFAULT_PORT,
        database=database,
    )


def _shown(text: str) -> str:
    """The URL quoted for an error message, with any password hidden."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        password = None
    if password:
        text = text.replace(":" + password + "@", ":***@", 1)
    return repr(text)
