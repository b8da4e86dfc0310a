"""The API's bodies and answers as models: bodies are validated against the limits of the
database and of the protocol (extra fields refused); answers are documented in the OpenAPI
document (the handlers write their JSON themselves, and the tests check it against these
models). Decimals are exact strings in answers ("0.4800"); times ISO 8601 UTC.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ev_common.web import Error, FieldError  # noqa: F401  (the JSON errors of every API: ev_common.web)

ID_REGEX = r"^[A-Za-z0-9_-]{1,64}$"  # CP, driver, account and session ids (ev_common.protocol Identifier)
ID_PATTERN = re.compile(ID_REGEX)
CITY_MAX = 100
#: ``City,CC``: a name, then one or two parts (country, or state and country), no control characters.
CITY_REGEX = r"^[^,\x00-\x1f\x7f]{1,80}(,[^,\x00-\x1f\x7f]{1,20}){1,2}$"
CITY_PATTERN = re.compile(CITY_REGEX)
TEMPERATURE_MIN, TEMPERATURE_MAX = Decimal(-100), Decimal(100)
MAX_REPORTS = 1000  # cities in one report
MAX_CPS = 1000  # CPs at one location
ERROR_MAX = 1000  # an EV_W error text accepted (the weather office keeps 300 characters of it)
ACTION_REGEX = r"^[a-z][a-z_]{0,31}(\.[a-z_]{1,32})?\.?$"

CPId = Annotated[str, Path(pattern=ID_REGEX, description="1-64 characters from A-Z a-z 0-9 _ -", examples=["CP001"])]
City = Annotated[str, Path(min_length=3, max_length=CITY_MAX, pattern=CITY_REGEX,
                           description="'City,CC' (1-100 printable characters)", examples=["Alicante,ES"])]


def limit_query(default: int, maximum: int) -> Any:
    return Query(default, ge=1, le=maximum, description=f"at most this many (1-{maximum}, default {default})")


def after_query(what: str) -> Any:
    return Query(None, pattern=ID_REGEX, description=f"the {what} ending the previous page (its 'next')")


# -- validation shared by the bodies -------------------------------------------------------------


def check_city(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a city is text such as 'Alicante,ES'")
    if not 3 <= len(value) <= CITY_MAX or not value.isprintable() or not CITY_PATTERN.fullmatch(value):
        raise ValueError(f"a city is 'City,CC' (such as 'Alicante,ES'), 3-{CITY_MAX} printable characters")
    if not value.split(",")[0].strip():
        raise ValueError("a city has a name before its ','")
    return value


def check_temperature(value: object) -> Decimal:
    """-100 to 100 °C with at most 2 decimal places: a JSON number or a string such as "-2.5"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError("a temperature is a number of °C such as -2.5")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError("a temperature is a number of °C such as -2.5") from None
    if not number.is_finite() or not TEMPERATURE_MIN <= number <= TEMPERATURE_MAX:
        raise ValueError(f"a temperature is from {TEMPERATURE_MIN} to {TEMPERATURE_MAX} °C")
    if number.as_tuple().exponent < -2:
        raise ValueError("a temperature has at most 2 decimal places")
    return number


def check_cp_ids(values: object) -> list[str]:
    if not isinstance(values, list):
        raise ValueError("cp_ids is a list of CP ids")
    if len(values) > MAX_CPS:
        raise ValueError(f"at most {MAX_CPS} CPs at one location")
    for value in values:
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise ValueError("a CP id is 1-64 characters from A-Z a-z 0-9 _ -")
    return values


TEMPERATURE_SCHEMA = {"anyOf": [{"type": "number", "minimum": -100, "maximum": 100, "multipleOf": 0.01},
                                {"type": "string", "pattern": r"^-?[0-9]{1,3}(\.[0-9]{1,2})?$"}],
                      "description": "°C, -100 to 100, at most 2 decimal places", "examples": [-2.5]}
CITY_SCHEMA = {"type": "string", "minLength": 3, "maxLength": CITY_MAX, "pattern": CITY_REGEX,
               "description": "'City,CC', such as 'Alicante,ES'", "examples": ["Alicante,ES"]}
CP_IDS_SCHEMA = {"type": "array", "maxItems": MAX_CPS, "items": {"type": "string", "pattern": ID_REGEX},
                 "description": "the CPs at that location", "examples": [["CP001", "CP002"]]}

CityName = Annotated[str, BeforeValidator(check_city), WithJsonSchema(CITY_SCHEMA)]
Temperature = Annotated[Decimal, BeforeValidator(check_temperature), WithJsonSchema(TEMPERATURE_SCHEMA)]
CPIds = Annotated[list[str], BeforeValidator(check_cp_ids), WithJsonSchema(CP_IDS_SCHEMA)]


def check_error(value: object) -> object:
    if value is not None and (not isinstance(value, str) or not value.isprintable()):
        raise ValueError("error is printable text")
    return value


class CityReportIn(BaseModel):
    """EV_W's check of one city."""

    model_config = ConfigDict(extra="forbid")

    city: CityName
    temperature: Annotated[Temperature | None, WithJsonSchema({"anyOf": [TEMPERATURE_SCHEMA, {"type": "null"}]})] = None
    cp_ids: CPIds = Field(default_factory=list)
    error: Annotated[str | None, BeforeValidator(check_error)] = Field(None, max_length=ERROR_MAX,
                                                                        description="why there is no temperature")
    simulated: bool = Field(False, description="read from EV_W's simulation file, not OpenWeather")


class WeatherReportIn(BaseModel):
    """EV_W's checks of one cycle (every 4 s)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reports": [
        {"city": "Alicante,ES", "temperature": 12.5, "cp_ids": ["CP001"], "error": None, "simulated": False}]}]})

    reports: list[CityReportIn] = Field(max_length=MAX_REPORTS)


class AlertIn(BaseModel):
    """A weather alert: the temperature at the city (below 0 °C) and its CPs."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"temperature": -2.5,
                                                                               "cp_ids": ["CP001"]}]})

    temperature: Temperature
    cp_ids: CPIds


# -- answers (documentation; tests check the handlers' JSON against them) ------------------------

Money = Annotated[str, Field(description="an exact decimal, such as \"0.4800\"", examples=["0.4800"])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Registration(Strict):
    state: Literal["registered", "deregistered", "not registered", "unknown"] = Field(
        description="at EV_Registry; 'unknown' until the database was read")
    since: datetime | None
    checked_at: datetime | None = Field(description="when Central last read the registrations")


class KeyState(Strict):
    version: int | None = Field(description="the key in force; null: none issued since its last revocation")
    revoked: bool = Field(description="revoked by the operator since Central started, not issued again")
    fingerprint: str | None = Field(description="'SHA256:' and the first 4 hex digits of the key's SHA-256, "
                                                "masked: never the key")


class Supply(Strict):
    session_id: str
    driver_id: str | None
    account_id: str | None
    tag: str | None = Field(description="an RFID tag's UID masked to its last 4 hex digits (...E73A)")
    started_at: datetime
    status: str
    kwh: Money
    amount_eur: Money
    price_eur_kwh: Money


class CP(Strict):
    cp_id: str
    location: str
    price_eur_kwh: Money
    state: Literal["ACTIVADO", "PARADO", "SUMINISTRANDO", "AVERIADO", "DESCONECTADO"]
    meaning: str = Field(description="the state in words: available, Out of Order, supplying, faulty, disconnected")
    stopped: bool = Field(description="stopped by the operator")
    weather_hold: bool = Field(description="held out of service by a weather alert")
    reason: str | None = Field(description="why it is out of service (null when it is not)")
    fault: str | None = Field(description="the Engine's fault as its Monitor reported it")
    updated_at: datetime
    supply: Supply | None = Field(description="the supply in course: driver or account, live kWh and EUR")
    registration: Registration
    key: KeyState | None = Field(description="secure mode: the CP's key (null in open mode)")


class CPList(Strict):
    cps: list[CP]


class OngoingRequest(Strict):
    started_at: datetime
    who: str = Field(description="the driver's id, or 'tag ...E73A (FLAT3B)'")
    cp_id: str
    status: Literal["deciding", "authorised", "supplying"]
    via: Literal["Kafka", "MCSP"]


class RequestList(Strict):
    requests: list[OngoingRequest]


class Message(Strict):
    at: datetime
    level: Literal["info", "warning", "error"]
    text: str


class MessageList(Strict):
    messages: list[Message]


class Driver(Strict):
    driver_id: str
    account_id: str | None
    registered_at: datetime
    supplying_at: str | None = Field(description="the CP of its supply in course, if any")


class DriverPage(Strict):
    drivers: list[Driver]
    next: str | None = Field(description="pass as 'after' for the next page; null on the last")


class Account(Strict):
    account_id: str
    name: str
    kind: str
    active: bool
    created_at: datetime


class AccountPage(Strict):
    accounts: list[Account]
    next: str | None


class Session(Supply):
    cp_id: str
    ended_at: datetime | None
    end_reason: str | None
    corrected: bool = Field(description="a corrected ticket was issued (the Engine's figures came late)")


class SessionPage(Strict):
    sessions: list[Session]
    next: str | None


class AuditEntry(Strict):
    seq: int
    at: datetime
    actor: str
    source_ip: str
    action: str
    details: str
    outcome: str
    hash: str


class AuditPage(Strict):
    entries: list[AuditEntry]
    head: int = Field(description="the last entry's seq in the log")
    next: int | None = Field(description="pass as 'after' for the next (newer) entries")


class CityWeather(Strict):
    city: str
    temperature: Money | None
    alert: bool
    alert_since: datetime | None
    last_report_at: datetime | None
    cp_ids: list[str]
    error: str | None
    simulated: bool


class EVW(Strict):
    last_seen: datetime | None
    silent: bool | None


class Weather(Strict):
    available: bool = Field(description="false when Central runs no weather office")
    cities: list[CityWeather]
    ev_w: EVW


class AlertOutcome(Strict):
    city: str
    active: bool
    stopped: list[str]
    resumed: list[str]
    unchanged: bool


class Part(BaseModel):
    ok: bool | None = None
    since: datetime | None = None


class Failing(Strict):
    part: str
    text: str
    since: datetime | None


class Monitors(Strict):
    total: int
    connected: int
    missing_count: int
    missing: list[dict[str, Any]] = Field(description="up to 100 CPs without their Monitor: cp_id, since")


class Health(Strict):
    at: datetime
    ok: bool = Field(description="Central's own parts (Kafka, database) are well")
    level: Literal["ok", "warning", "error"]
    text: str = Field(description="the panel's status line")
    mode: Literal["secure", "open"]
    kafka: dict[str, Any]
    database: dict[str, Any]
    audit: dict[str, Any]
    registry: dict[str, Any]
    ev_w: dict[str, Any]
    monitors: Monitors
    records_refused: int
    failing: list[Failing]


