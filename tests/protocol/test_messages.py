"""Messages: tables that drive encode and decode; every field rule; the error types."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from ev_common.protocol import (
    MESSAGES,
    Auth,
    Avr,
    Can,
    Fin,
    Key,
    Chk,
    Err,
    Hb,
    Health,
    Rec,
    Resume,
    Rvk,
    Sq,
    Sst,
    Stop,
    Sup,
    Supr,
    FieldCountError,
    InvalidField,
    LocalProtocolError,
    MessageError,
    Reg,
    UnknownOpcode,
)

# (wire DATA, message): decode(DATA) == message and message.to_data() == DATA
ROUND_TRIPS = [
    ("REG#CP001#C/Mayor, 45#0.48", Reg("CP001", "C/Mayor, 45", Decimal("0.48"))),
    ("REG#cp_2-B#Plaza España 3#0", Reg("cp_2-B", "Plaza España 3", Decimal("0"))),
    ("REG#X#Calle 1#1000", Reg("X", "Calle 1", Decimal("1000"))),
    ("REG#X#Calle 1#0.12340", Reg("X", "Calle 1", Decimal("0.12340"))),  # trailing zeros are fine
    ("AUTH#OK#Autenticacion exitosa", Auth("OK", "Autenticacion exitosa")),
    ("AUTH#KO#price must be >= 0", Auth("KO", "price must be >= 0")),
    ("AUTH#OK#", Auth("OK", "")),
    ("ERR#UNKNOWN_OPCODE#unknown opcode 'FOO'", Err("UNKNOWN_OPCODE", "unknown opcode 'FOO'")),
    ("HB#CP001", Hb("CP001")),
    ("AVR#CP001#Engine answers KO (simulated fault)", Avr("CP001", "Engine answers KO (simulated fault)")),
    ("REC#CP001", Rec("CP001")),
    ("CHK#CP001", Chk("CP001")),
    ("HEALTH#OK#", Health("OK", "")),
    ("HEALTH#KO#simulated fault", Health("KO", "simulated fault")),
    ("SUP#CP001#s-1#D001#0.48", Sup("CP001", "s-1", "D001", Decimal("0.48"))),
    ("SUPR#CP001#s-1#OK#", Supr("CP001", "s-1", "OK", "")),
    ("SUPR#CP001#s-1#KO#busy", Supr("CP001", "s-1", "KO", "busy")),
    ("STOP#CP001", Stop("CP001")),
    ("RESUME#CP001", Resume("CP001")),
    ("CAN#CP001#s-1#Central gave up", Can("CP001", "s-1", "Central gave up")),
    ("FIN#CP001#s-1", Fin("CP001", "s-1")),
    ("KEY#CP001#0", Key("CP001", 0)),
    ("KEY#CP001#3#" + "A" * 43, Key("CP001", 3, "A" * 43)),
    ("RVK#CP001#keys revoked by the operator", Rvk("CP001", "keys revoked by the operator")),
    ("REG#CP001#C/Mayor, 45#0.48#evc1_Zm9vYmFy", Reg("CP001", "C/Mayor, 45", Decimal("0.48"), "evc1_Zm9vYmFy")),
    ("SQ#CP001", Sq("CP001")),
    ("SST#CP001#IDLE##0#0", Sst.idle("CP001")),
    ("SST#CP001#SUPPLYING#s-1#12#2.7500", Sst("CP001", "SUPPLYING", "s-1", 12, Decimal("2.7500"))),
    ("SST#CP001#AUTHORISED#s-1#0#0", Sst("CP001", "AUTHORISED", "s-1", 0, Decimal(0))),
]


def test_every_opcode_has_a_round_trip_row():
    assert {message.OPCODE for _, message in ROUND_TRIPS} == {cls.OPCODE for cls in MESSAGES}


@pytest.mark.parametrize("data,message", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip(data, message):
    assert MESSAGES.decode(data) == message
    assert message.to_data() == data.encode()


# (DATA, error class, text the error must mention)
BAD_CONTENT = [
    ("FOO#1", UnknownOpcode, "FOO"),
    ("reg#CP1#x#1", UnknownOpcode, "reg"),
    ("", UnknownOpcode, ""),
    ("REG", FieldCountError, "takes 3 to 5"),
    ("REG#CP1#x", FieldCountError, "got 2"),
    ("REG#CP1#x#1#credential#ticket#extra", FieldCountError, "takes 3 to 5"),
    ("REG#CP1#x#1#not base64!", InvalidField, "credential"),
    ("KEY#CP1#1", InvalidField, "KEY"),
    ("REG#CP 1#x#1", InvalidField, "cp_id"),
    ("REG##x#1", InvalidField, "cp_id"),
    ("REG#" + "C" * 65 + "#x#1", InvalidField, "cp_id"),
    ("REG#CP1##1", InvalidField, "location"),
    ("REG#CP1#x#-0.5", InvalidField, "below 0"),
    ("REG#CP1#x#abc", InvalidField, "not a decimal"),
    ("REG#CP1#x#NaN", InvalidField, "price"),
    ("REG#CP1#x#1e3", InvalidField, "price"),
    ("REG#CP1#x#1001", InvalidField, "above"),
    ("REG#CP1#x#0.12345", InvalidField, "more than 4 decimal places"),
    ("AUTH#MAYBE#x", InvalidField, "status"),
    ("ERR#NOPE#x", InvalidField, "code"),
    ("SST#CP1#PAUSED##0#0", InvalidField, "phase"),
    ("SST#CP1#IDLE#bad id#0#0", InvalidField, "session_id"),
    ("SST#CP1#IDLE##2147483648#0", InvalidField, "above"),
    ("SST#CP1#IDLE##1.5#0", InvalidField, "seq"),
    ("SST#CP1#IDLE##0#100000000", InvalidField, "above"),
    ("SST#CP1#IDLE##0#0.00001", InvalidField, "decimal places"),
    ("CAN#CP1#s1#", InvalidField, "reason"),
]


def kept(data: str) -> bytes:
    """What an error keeps of ``data``: at most 128 bytes, and a REG's credential and ticket as ``***``."""
    return re.sub(rb"^(REG#[^#]*#[^#]*#[^#]*#).+", rb"\1***", data.encode()[:128])


@pytest.mark.parametrize("data,error,mentions", BAD_CONTENT, ids=[r[0][:30] or "empty" for r in BAD_CONTENT])
def test_bad_content_raises_typed_error_with_bytes(data, error, mentions):
    with pytest.raises(error) as info:
        MESSAGES.decode(data)
    assert isinstance(info.value, MessageError)
    assert info.value.raw == kept(data)
    assert mentions in str(info.value)


def test_message_error_names_opcode():
    with pytest.raises(InvalidField) as info:
        MESSAGES.decode("REG#bad id#x#1")
    assert info.value.opcode == "REG"
    assert info.value.field == "cp_id"


@pytest.mark.parametrize(
    "build",
    [
        lambda: Reg("CP#1", "x", Decimal(1)),
        lambda: Reg("CP1", "a#b", Decimal(1)),
        lambda: Reg("CP1", "line\nbreak", Decimal(1)),
        lambda: Reg("CP1", "x", Decimal(-1)),
        lambda: Reg("CP1", "x", Decimal("Infinity")),
        lambda: Reg("CP1", "", Decimal(1)),
        lambda: Reg("CP1", "x", Decimal("0.1234567891")),
        lambda: Auth("YES", "x"),
        lambda: Reg("CP1", "x" * 201, Decimal(1)),
    ],
)
def test_sender_refuses_to_build_invalid_messages(build):
    with pytest.raises(LocalProtocolError, match="cannot build"):
        build()


def test_messages_are_frozen():
    msg = Reg("CP1", "x", Decimal(1))
    with pytest.raises(AttributeError):
        msg.cp_id = "CP2"


def test_auth_helpers_sanitise_free_text():
    assert Auth.refused("bad id 'a#b'\n").to_data() == b"AUTH#KO#bad id 'a?b'?"
    assert Auth.accepted().ok and not Auth.refused("x").ok


@pytest.mark.parametrize("data,code", [("ZAP#1", "UNKNOWN_OPCODE"), ("REG#1", "BAD_MESSAGE"),
                                       ("REG#CP1#x#-1", "BAD_MESSAGE")])
def test_err_about_maps_error_kinds(data, code):
    with pytest.raises(MessageError) as info:
        MESSAGES.decode(data)
    assert Err.about(info.value).code == code


def test_registry_refuses_duplicate_opcodes():
    from ev_common.protocol import Registry

    registry = Registry()
    registry.register(Reg)
    with pytest.raises(ValueError, match="twice"):
        registry.register(Reg)
    assert "REG" in registry and registry.get("AUTH") is None


def test_every_registered_message_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for cls in MESSAGES:
        assert f"`{cls.OPCODE}#" in doc or f"`{cls.OPCODE}`" in doc, f"{cls.OPCODE} is missing from docs/protocol.md"


def test_an_empty_optional_field_is_left_out_and_a_message_without_it_is_taken():
    assert Reg("CP001", "C/Mayor, 45", Decimal("0.48")).to_data() == b"REG#CP001#C/Mayor, 45#0.48"  # Release 1
    assert MESSAGES.decode("REG#CP001#C/Mayor, 45#0.48#").credential == ""
    with pytest.raises(FieldCountError):
        MESSAGES.decode("REG#CP001#C/Mayor, 45")
    with pytest.raises(FieldCountError):
        MESSAGES.decode("REG#CP001#C/Mayor, 45#0.48#evc1_x#ticket#extra")
    assert MESSAGES.decode("REG#CP001#C/Mayor, 45#0.48#evc1_x#T1").ticket == "T1"
    assert Reg("CP001", "x", Decimal("1"), "evc1_x", "T1").to_data() == b"REG#CP001#x#1#evc1_x#T1"
    assert Auth.accepted().to_data() == b"AUTH#OK#Autenticacion exitosa"  # Release 1: no ticket
    assert MESSAGES.decode("AUTH#OK#hi#T1") == Auth.accepted("hi", "T1")


def test_secrets_are_never_shown():
    reg = Reg("CP001", "C/Mayor, 45", Decimal("0.48"), "evc1_SECRETvalue")
    key = Key("CP001", 2, "S" * 43)
    assert "SECRET" not in repr(reg) and "SSSS" not in repr(key)
    assert reg.redacted() == "REG#CP001#C/Mayor, 45#0.48#***"
    with pytest.raises(MessageError) as bad:
        MESSAGES.decode("REG#CP001#C/Mayor, 45#-1#evc1_SECRETvalue")  # a bad price, a good credential
    assert "SECRET" not in str(bad.value) and "***" in str(bad.value)
    with pytest.raises(MessageError) as bad:
        MESSAGES.decode("KEY#CP001#x#" + "S" * 43)
    assert "SSSS" not in str(bad.value)
    with_ticket = Reg("CP001", "C/Mayor, 45", Decimal("0.48"), "evc1_SECRETvalue", "TICKETvalue")
    assert "TICKET" not in repr(with_ticket) and "TICKET" not in repr(Auth.accepted("hi", "TICKETvalue"))
    assert with_ticket.redacted() == "REG#CP001#C/Mayor, 45#0.48#***#***"
    for bad_data in ("REG#CP001#C/Mayor, 45#-1#evc1_SECRETvalue#TICKETvalue", "AUTH#MAYBE#hi#TICKETvalue"):
        with pytest.raises(MessageError) as bad:
            MESSAGES.decode(bad_data)
        assert "SECRET" not in str(bad.value) and "TICKET" not in str(bad.value), bad.value
    with pytest.raises(LocalProtocolError):
        Key("CP001", 1)  # a version from 1 needs its key
    with pytest.raises(LocalProtocolError):
        Key("CP001", 0, "S" * 43)
