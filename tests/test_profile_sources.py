"""Where profiles come from: --targets-dir, $EDGEKIT_TARGETS_DIR, the project's ./targets,
the user's $XDG_CONFIG_HOME/edgekit/targets and the shipped ones, first match wins; and the
repository's top-level folders are the package's own files, not copies that can drift."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.cli import assert_clean_error, run_edgekit
from helpers.paths import REPO


def profile(folder: Path, name: str, base: str = "host-cpu", objective: str = "latency") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "targets" / f"{base}.toml").read_text().replace(f'name = "{base}"', f'name = "{name}"')
    path = folder / f"{name}.toml"
    path.write_text(text.replace('objective = "latency"', f'objective = "{objective}"'))
    return path


def test_each_listed_profile_says_where_it_came_from_and_the_first_place_wins(tmp_path):
    project, user, given = tmp_path / "proj", tmp_path / "config", tmp_path / "given"
    profile(project / "targets", "board-a")
    profile(user / "edgekit" / "targets", "board-b")
    profile(user / "edgekit" / "targets", "board-a", objective="size")  # the project's wins
    profile(given, "board-c")
    profile(given, "host-cpu", objective="size")  # --targets-dir shadows the shipped one
    env = {"XDG_CONFIG_HOME": str(user), "PYTHONPATH": str(REPO)}  # this checkout, from another folder
    done = run_edgekit("targets", "list", "--targets-dir", given, "--json", cwd=project, env=env)
    assert done.code == 0, done.stderr
    found = {p["name"]: (p["source"], p["objective"]) for p in done.json()}
    assert found["board-a"] == ("project", "latency") and found["board-b"] == ("user", "latency")
    assert found["board-c"] == ("--targets-dir", "latency") and found["host-cpu"] == ("--targets-dir", "size")
    assert found["x86-gateway"][0] == "shipped"
    table = run_edgekit("targets", "list", "--targets-dir", given, cwd=project, env=env)
    assert f"from project ({project / 'targets'}): board-a" in table.stdout, table.stdout
    assert "from shipped with edgekit: " in table.stdout
    shown = run_edgekit("targets", "show", "board-b", "--json", cwd=project, env=env)
    assert shown.code == 0 and json.loads(shown.stdout)["name"] == "board-b"


def test_the_repositorys_folders_are_the_packages_own_files():
    import edgekit

    shipped = Path(edgekit.__file__).parent / "resources"
    for folder in ("targets", "examples", "calibration"):
        assert (REPO / folder).resolve() == (shipped / folder).resolve(), folder


def test_a_profile_whose_name_is_not_its_files_is_refused(edgekit, tmp_path):
    # found as 'misnamed', it packaged bundles for 'other', which no inventory could name
    (tmp_path / "misnamed.toml").write_text((REPO / "targets" / "host-cpu.toml").read_text()
                                            .replace('name = "host-cpu"', 'name = "other"'))
    for args in (("targets", "show", "misnamed"), ("targets", "list")):
        assert_clean_error(edgekit(*args, "--targets-dir", tmp_path),
                           "misnamed.toml: field 'name': 'other' is not the file's name 'misnamed'")
