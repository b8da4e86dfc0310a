"""The words every program shows for the same things, defined once.

State names are the assignment's (Spanish, as on Central's panel); the messages
people read are in English. Screens and logs import them from here.
"""

from __future__ import annotations

from typing import Final

# CP states, as Central shows them
ACTIVADO: Final = "ACTIVADO"
PARADO: Final = "PARADO"
SUMINISTRANDO: Final = "SUMINISTRANDO"
AVERIADO: Final = "AVERIADO"
DESCONECTADO: Final = "DESCONECTADO"
CP_STATES: Final = (ACTIVADO, PARADO, SUMINISTRANDO, AVERIADO, DESCONECTADO)

# colour of each state on every screen (hex: valid in Textual CSS and in Rich)
STATE_COLOURS: Final = {
    ACTIVADO: "#008000",
    PARADO: "#ff8700",
    SUMINISTRANDO: "#008000",
    AVERIADO: "#ff0000",
    DESCONECTADO: "#808080",
}

# what each state means to a person
STATE_MEANINGS: Final = {
    ACTIVADO: "available",
    PARADO: "Out of Order",
    SUMINISTRANDO: "supplying",
    AVERIADO: "faulty",
    DESCONECTADO: "disconnected",
}

OUT_OF_ORDER: Final = "Out of Order"
CANNOT_CONNECT: Final = "Cannot connect to CENTRAL"
CENTRAL_OK: Final = "Central system status OK"
KAFKA_UNREACHABLE: Final = "Kafka unreachable"
DATABASE_UNREACHABLE: Final = "database unreachable"
STOPPED_BY_CENTRAL: Final = "stopped by Central"
#: Why a CP is out of service while a weather alert (EV_W, docs/weather.md) covers its location;
#: also the reason of a supply it interrupted. Distinct from an operator's stop.
WEATHER_ALERT: Final = "weather alert"

# an Engine that cannot reach Kafka says so in its health answers: Central then authorises
# nothing at that CP, but does not end a supply for it (its figures reach Central later)
CANNOT_REPORT: Final = "Kafka unreachable: this CP cannot report supplies"

#: Why a CP is out of service after an operator's "keys revoke" (secure mode): its Monitor must
#: authenticate again (docs/security.md). Also the reason of a supply it interrupted.
KEYS_REVOKED = "keys revoked by the operator"


def some_of(names: list[str], shown: int = 5) -> str:
    """A few names of a long list, for a log line: "CP1, CP2, CP3 and 97 more"."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
