"""The [cluster] section: off by default, validated, overridable from the environment."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import pytest

from pbxwarden.config import DEFAULT_CONFIG_TEXT, Config, ConfigError, load_config


def test_off_by_default_with_the_host_name_as_the_node() -> None:
    config = Config.model_validate(tomllib.loads(DEFAULT_CONFIG_TEXT))
    assert not config.cluster.enabled
    expected = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "node"
    assert config.cluster.node == expected
    assert config.cluster.key_prefix == "pbxwarden:"


def test_set_from_the_environment(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        {
            "PBXWARDEN_CLUSTER__REDIS_URL": "redis://10.0.0.5:6379/0",
            "PBXWARDEN_CLUSTER__NODE": "pbx-a",
        },
    )
    assert config.cluster.enabled and config.cluster.node == "pbx-a"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("REDIS_URL", "http://10.0.0.5", "redis://"),
        ("NODE", "pbx a|b", "cluster.node"),
        ("TIMEOUT", "0", "cluster.timeout"),
        ("REDIS_URLL", "redis://x", "did you mean"),
        ("REDIS_URL", "redis+sentinel://10.0.0.5:26379", "names the service"),
        ("REDIS_URL", "redis+sentinel://10.0.0.5:x/pbx", "host:port"),
        ("REDIS_URL", "redis+sentinel://10.0.0.5/pbx/zero", "must be a number"),
    ],
)
def test_mistakes_are_one_clear_message(tmp_path: Path, key: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config(tmp_path, {f"PBXWARDEN_CLUSTER__{key}": value})


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_password() -> None:
    from pbxwarden.cluster.connection import SentinelTarget, _safe, parse_sentinel

    url = "redis+sentinel://:s%40cret@10.0.0.5:26379,10.0.0.6,[2001:db8::7]:26380/pbx/2"
    assert parse_sentinel(url) == SentinelTarget(
        (("10.0.0.5", 26379), ("10.0.0.6", 26379), ("2001:db8::7", 26380)),
        "pbx",
        2,
        None,
        "s@cret",
    )
    assert "cret" not in _safe(url)
    assert parse_sentinel("redis+sentinel://ops:pw@h:1/m") == SentinelTarget(
        (("h", 1),), "m", 0, "ops", "pw"
    )
    assert parse_sentinel("redis://10.0.0.5:6379/0") is None
