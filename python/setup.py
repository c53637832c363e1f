"""Puts libtileattn.so into the package (tileattn/_lib/) while building it.

The library comes from $TILEATTN_PREBUILT_LIBRARY if set, else from a CMake build of the repository's `tileattn`
target (needs what scripts/install-deps.sh installs: nvcc, CMake, fmt, nlohmann-json, the CuTe headers). The package
talks to the library only through its C ABI, so one build serves every PyTorch 2.x."""
import os
import pathlib
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

REPO = pathlib.Path(__file__).resolve().parent.parent


def library_path(build_temp: pathlib.Path) -> pathlib.Path:
    prebuilt = os.environ.get("TILEATTN_PREBUILT_LIBRARY")
    if prebuilt:
        path = pathlib.Path(prebuilt)
        if not path.is_file():
            raise SystemExit(f"TILEATTN_PREBUILT_LIBRARY={prebuilt}: no such file")
        return path
    build = build_temp / "cmake"
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DTILEATTN_TESTS=OFF", "-DTILEATTN_CLI=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "tileattn"], check=True)
    return build / "libtileattn.so"


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        lib = library_path(pathlib.Path(self.build_lib).parent / "tileattn-build")
        dest = pathlib.Path(self.build_lib) / "tileattn" / "_lib"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest / "libtileattn.so")


setup(cmdclass={"build_py": BuildWithLibrary})
