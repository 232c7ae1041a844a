"""The schema check that lets commands skip Alembic: only "at head" when it truly is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from pbxwarden.store.db import Store
from pbxwarden.store.schema import VERSIONS, at_head, head_revision


def test_the_head_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(VERSIONS.parent))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def write(path: Path, revision: str, down: str | None) -> None:
    path.write_text(f'revision = "{revision}"\ndown_revision = {down!r}\n'.replace("'", '"'))


def test_anything_unclear_is_not_a_head(tmp_path: Path) -> None:
    write(tmp_path / "0001_a.py", "0001", None)
    write(tmp_path / "0002_b.py", "0002", "0001")
    assert head_revision(tmp_path) == "0002"
    write(tmp_path / "0003_c.py", "0003", "0001")  # two branches: ask Alembic
    assert head_revision(tmp_path) is None
    (tmp_path / "0003_c.py").write_text('revision = "0003"\ndown_revision = ("0001", "0002")\n')
    assert head_revision(tmp_path) is None  # a merge revision
    (tmp_path / "0003_c.py").write_text("print('no revision here')\n")
    assert head_revision(tmp_path) is None
    assert head_revision(tmp_path / "missing") is None


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pbx.db'}"
    base: str = request.getfixturevalue("postgres_url")
    store = Store(base)
    name = f"schema_{abs(hash(tmp_path)) % 10**8}"
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    store.close()
    return base.rsplit("/", 1)[0] + f"/{name}"


def test_a_new_database_is_migrated_then_known_current(url: str) -> None:
    store = Store(url)
    try:
        assert not at_head(store.engine)  # no version table yet
        store.migrate()
        assert at_head(store.engine)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert not at_head(store.engine)  # an older schema: Alembic would upgrade it
        with store.engine.begin() as conn:
            conn.execute(text(f"UPDATE alembic_version SET version_num = '{head_revision()}'"))
        store.migrate()  # at head: nothing to do, and Alembic is not even loaded
        assert at_head(store.engine)
    finally:
        store.close()


def test_migrate_at_head_does_not_load_alembic(tmp_path: Path) -> None:
    import subprocess

    url = f"sqlite:///{tmp_path / 'pbx.db'}"
    store = Store(url)
    store.migrate()
    store.close()
    code = (
        "import sys\nfrom pbxwarden.store.db import Store\n"
        f"s = Store({url!r}); s.migrate(); s.close()\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
