"""Build hook: ship the protocol's Lua scripts inside the package.

The Lua steps every worker runs (the commit, group sends, stream ownership,
shard announcements) live once, in ``protocol/lua/`` at the root of the
Switchyard repository; the Rust crates ``include_str!`` them. This hook copies
the same files into the built package as ``switchyard/lua/*.lua``, so the
Python worker runs byte for byte what the Rust worker runs. Nothing is kept
twice in git; ``python/tests/test_lua.py`` checks the installed copies against
the repository's files, and ``tests/tests/python_protocol.rs`` checks the
script texts each side sends to Redis.

Build from a checkout of the repository (``pip install ./python``): the hook
refuses to build a package without the scripts.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
LUA_SOURCE = HERE.parent / "protocol" / "lua"


class BuildWithLua(build_py):
    def run(self) -> None:
        super().run()
        scripts = sorted(LUA_SOURCE.glob("*.lua"))
        if not scripts:
            raise SystemExit(
                f"switchyard: no Lua scripts in {LUA_SOURCE}; build the package from a "
                "checkout of the Switchyard repository (pip install ./python)"
            )
        target = Path(self.build_lib) / "switchyard" / "lua"
        target.mkdir(parents=True, exist_ok=True)
        for script in scripts:
            shutil.copyfile(script, target / script.name)


setup(cmdclass={"build_py": BuildWithLua})
