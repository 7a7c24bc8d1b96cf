"""The protocol has one source: the package runs the repository's protocol/lua/ files, byte for byte."""

from pathlib import Path

from switchyard import scripts

REPO = Path(__file__).resolve().parents[2]


def test_the_packaged_lua_files_are_the_repositorys() -> None:
    source = REPO / "protocol" / "lua"
    repo_files = sorted(p.name for p in source.glob("*.lua"))
    assert repo_files, f"no Lua files in {source}"
    assert sorted(scripts.NAMES) == repo_files, "the package's script list and protocol/lua/ differ"
    packaged = scripts.lua_dir()
    for name in repo_files:
        assert (packaged / name).read_bytes() == (source / name).read_bytes(), (
            f"{packaged / name} differs from protocol/lua/{name}: reinstall the package (pip install ./python)"
        )


def test_the_package_ships_its_own_copy() -> None:
    # Installed from a wheel, the scripts come from the package, not from a checkout nearby.
    assert scripts.lua_dir() == Path(str(scripts.resources.files("switchyard"))) / "lua"


def test_composed_scripts_start_with_the_shared_function() -> None:
    assert scripts.COMMIT_GROUPS.startswith(scripts.GROUP_SEND_FUNCTION)
    assert scripts.GROUP_SEND.startswith(scripts.GROUP_SEND_FUNCTION)
    assert scripts.GROUP_SEND.endswith(
        "return group_send(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])"
    )
