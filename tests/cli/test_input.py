"""Input as operators write it: refused with a reason that says where, accepted when it
only looks different, and nothing stored is lost either way."""

from __future__ import annotations

import json
from pathlib import Path

import phonenumbers
import pytest

from tests.helpers import cli


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    cli(d, "init")
    cli(d, "extension", "add", "1000", "--password", "Front-Desk-Passw0rd")
    cli(d, "extension", "add", "2000", "--password", "Back-Office-Passw0rd")
    return d


def tenants(data: Path) -> dict[str, str]:
    return {
        t["tenant"]: t["country"] for t in json.loads(cli(data, "tenant", "list", "--json").stdout)
    }


def numbers(data: Path) -> list[str]:
    return [e["number"] for e in json.loads(cli(data, "extension", "list", "--json").stdout)]


def test_a_country_libphonenumber_does_not_know_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    for country in ("XX", "ZZ", "EU", "UK", "U", "USA", "1"):
        assert country not in phonenumbers.SUPPORTED_REGIONS
        proc = cli(
            data,
            "tenant",
            "add",
            "acme",
            "--realm",
            "acme.example",
            "--country",
            country,
            check=False,
        )
        assert proc.returncode == 1 and "invalid country" in proc.stderr, country
        assert "Traceback" not in proc.stderr
    assert tenants(data) == {"default": "US"}


def test_countries_are_taken_in_either_case(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    cli(data, "tenant", "add", "acme", "--realm", "acme.example", "--country", "gb")
    cli(data, "tenant", "add", "bolt", "--realm", "bolt.example", "--country", "DE")
    assert tenants(data) == {"default": "US", "acme": "GB", "bolt": "DE"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "3000,Good-Passw0rd-aa\n3001,Good-Passw0rd-bb\n3002,short\n",
            "line 3: password too short",
        ),
        (
            "number,password\n3000,Good-Passw0rd-aa\n\n30x1,Good-Passw0rd-bb\n",
            "line 4: invalid extension number '30x1'",
        ),
        ("3000,Good-Passw0rd-aa\n3001\n", "line 2: expected 'number,password'"),
        (
            "3000,Good-Passw0rd-aa\n3001,Good-Passw0rd-bb\n3000,Good-Passw0rd-cc\n",
            "line 3: extension 3000 is also on line 1",
        ),
        ("3000,Good-Passw0rd-aa\n1000,Good-Passw0rd-bb\n", "line 2: extension 1000 already exists"),
        ('3000,"Good-Passw0rd-aa"\n"3001","a\nb"\n3002,Good-Passw0rd-cc\n', "line 2: password"),
        ("", "no extensions in it"),
    ],
)
def test_import_errors_name_the_line_and_import_nothing(
    data: Path, tmp_path: Path, content: str, expected: str
) -> None:
    users = tmp_path / "users.csv"
    users.write_text(content)
    proc = cli(data, "extension", "import", str(users), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nothing imported" in proc.stderr
    assert (f"users.csv {expected}" if "line" in expected else expected) in proc.stderr
    assert numbers(data) == ["1000", "2000"]


def test_import_takes_a_header_line_and_blank_lines(data: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    users.write_text("Number,Password\n\n3000, Good-Passw0rd-aa \n3001,Good-Passw0rd-bb\n")
    assert "imported 2" in cli(data, "extension", "import", str(users)).stdout
    assert numbers(data) == ["1000", "2000", "3000", "3001"]


def forwardings(data: Path) -> dict[str, object]:
    [row] = json.loads(cli(data, "forward", "list", "--json").stdout) or [{}]
    return dict(row)


WRITTEN = [  # as people write numbers, and as they are judged and stored
    ("(202) 555-0143", "2025550143"),
    ("202.555.0143", "2025550143"),
    (" +1 202-555-0143 ", "+12025550143"),
    ("1 (202) 555 0143", "12025550143"),
    ("20 00", "2000"),
]
REFUSED = [
    ("+1 (900) 555-0123", "premium-rate"),
    ("011 39 06 1234 5678", "international"),
    ("call me", "not a number to forward to"),
    ("(202) 555-0143 ext 7", "not a number to forward to"),
]


def test_forwarding_targets_as_people_write_them(data: Path) -> None:
    for written, stored in WRITTEN:
        out = cli(data, "forward", "set", "1000", "--always", written).stdout
        assert out.strip().endswith(f"-> {stored}"), (written, out)
        assert forwardings(data)["always"] == stored
    history = json.loads(cli(data, "forward", "list", "--history", "--json").stdout)
    assert sorted(c["new"] for c in history) == sorted(stored for _, stored in WRITTEN)
    assert {c["source"] for c in history} == {"cli"}
    assert all(str(c["actor"]).startswith("cli:") for c in history)


def test_forwarding_is_judged_after_normalising(data: Path) -> None:
    cli(data, "forward", "set", "1000", "--always", "2000")
    for written, reason in REFUSED:
        proc = cli(data, "forward", "set", "1000", "--always", written, check=False)
        assert proc.returncode == 1 and reason in proc.stderr, (written, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert forwardings(data)["always"] == "2000"  # what was set stays


TYPOS = [
    (
        '[sip]\nlisen = "127.0.0.1:5060"\n',
        {},
        "unknown key sip.lisen: did you mean sip.listen?",
    ),
    (
        "[calls]\nring_timout = 30\n",
        {},
        "unknown key calls.ring_timout: did you mean calls.ring_timeout?",
    ),
    ("[firewal]\nallow = []\n", {}, "unknown key firewal: did you mean firewall?"),
    (
        "[guard.tenants.acme]\nspend_per_dya = 5\n",
        {},
        "unknown key guard.tenants.acme.spend_per_dya: "
        "did you mean guard.tenants.acme.spend_per_day?",
    ),
    (
        "",
        {"PBXWARDEN_SIP__LISEN": "127.0.0.1:5060"},
        "unknown key sip.lisen (PBXWARDEN_SIP__LISEN): did you mean sip.listen?",
    ),
    (
        "",
        {"PBXWARDEN_MEDIA__RELEY": "true"},
        "unknown key media.reley (PBXWARDEN_MEDIA__RELEY): did you mean media.relay?",
    ),
    (
        "",
        {"PBXWARDEN_SIP_LISTEN": "127.0.0.1:5060"},
        "PBXWARDEN_SIP_LISTEN is not read: did you mean PBXWARDEN_SIP__LISTEN?",
    ),
    ("[sip]\nzzzzzz = 1\n", {}, "unknown key sip.zzzzzz\n"),
]


def test_a_configuration_typo_names_the_key_meant(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    config = data / "pbxwarden.toml"
    for toml, env, message in TYPOS:
        config.write_text(toml)  # the whole file: only the typo in it
        for command in (("extension", "list"), ("serve",)):
            proc = cli(data, *command, check=False, env=env)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr
            assert message in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1  # one problem, one line
