import shutil
import subprocess
import sys

from helpers.cli import assert_clean_error
from helpers.paths import REPO


FIVE = {"raspberry-pi-4", "raspberry-pi-zero-2w", "jetson-orin-nano", "x86-gateway", "host-cpu"}


def test_targets_list_json_has_the_five_profiles(edgekit):
    result = edgekit("targets", "list", "--json")
    assert result.code == 0, result.stderr
    names = {p["name"] for p in result.json()}
    assert FIVE <= names
    for p in result.json():
        assert p["budgets"]["max_model_mb"] > 0


def test_each_profile_shows(edgekit):
    for name in FIVE:
        result = edgekit("targets", "show", name, "--json")
        assert result.code == 0, result.stderr
        assert result.json()["name"] == name


def test_show_takes_a_path(edgekit):
    result = edgekit("targets", "show", REPO / "targets" / "x86-gateway.toml", "--json")
    assert result.code == 0
    assert result.json()["reduce_range"] is True


def test_broken_profile_names_file_and_field(edgekit, tmp_path):
    text = (REPO / "targets" / "raspberry-pi-4.toml").read_text().replace("threads = 4", 'threads = "four"')
    bad = tmp_path / "broken.toml"
    bad.write_text(text)
    assert_clean_error(edgekit("targets", "show", bad), "broken.toml", "threads")


def test_unknown_key_is_named(edgekit, tmp_path):
    bad = tmp_path / "extra.toml"
    bad.write_text((REPO / "targets" / "host-cpu.toml").read_text() + "\n[budgets2]\nx = 1\n")
    assert_clean_error(edgekit("targets", "show", bad), "extra.toml", "budgets2", "unknown key")


def test_unknown_budget_key_is_named(edgekit, tmp_path):
    text = (REPO / "targets" / "host-cpu.toml").read_text().replace("[budgets]", "[budgets]\nmax_ram = 3")
    bad = tmp_path / "b.toml"
    bad.write_text(text)
    assert_clean_error(edgekit("targets", "show", bad), "budgets.max_ram")


def test_malformed_toml(edgekit, tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text("name = [unclosed\n")
    assert_clean_error(edgekit("targets", "show", bad), "m.toml", "malformed TOML")


def test_unknown_target(edgekit):
    assert_clean_error(edgekit("targets", "show", "no-such-board"), "no-such-board", "host-cpu")


def test_targets_dir_adds_profiles(edgekit, tmp_path):
    shutil.copy(REPO / "targets" / "host-cpu.toml", tmp_path / "my-board.toml")
    text = (tmp_path / "my-board.toml").read_text().replace('name = "host-cpu"', 'name = "my-board"')
    (tmp_path / "my-board.toml").write_text(text)
    result = edgekit("targets", "list", "--json", "--targets-dir", tmp_path)
    assert "my-board" in {p["name"] for p in result.json()}


def test_broken_profile_in_targets_dir_fails_list_and_hides_no_other(edgekit, tmp_path):
    (tmp_path / "bad.toml").write_text('name = "bad"\narch = "mips"\n')
    listed = edgekit("targets", "list", "--targets-dir", tmp_path)
    assert_clean_error(listed, "bad.toml", "arch")
    assert "host-cpu" in listed.stdout  # the good profiles are still listed
    as_json = edgekit("targets", "list", "--json", "--targets-dir", tmp_path)
    assert as_json.code == 2 and "host-cpu" in {p["name"] for p in as_json.json()}


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom edgekit.cli.main import main\nsys.argv=['edgekit','--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('torch','onnxruntime','ai_edge_litert','tflite_runtime','litert_torch','onnx') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout
    assert "HEAVY []" in out, out
