#!/usr/bin/env bash
# Build a zeroc-ice 3.6.5 wheel for this Python into a wheelhouse that later runs reuse.
#
# PyPI has only the 3.6.5 sdist, and it does not compile on Python >= 3.11:
#   - src/Slice.cpp includes <eval.h>, which 3.11 removed (Python.h declares what it needs);
#   - src/Util.cpp reads PyThreadState->frame, which 3.11 removed (PyThreadState_GetFrame).
# This script downloads the sdist, applies exactly those two fixes and builds a wheel
# (about 14 minutes on a 2-core machine). It does nothing if a matching wheel is already there.
#
# Usage: scripts/build-ice-wheel.sh [PYTHON]   (default: python3)
# Wheelhouse: $OMERO_DROPBOX_WHEELHOUSE, default ~/.cache/omero-dropbox-ng/wheelhouse
set -euo pipefail

python=${1:-python3}
wheelhouse=${OMERO_DROPBOX_WHEELHOUSE:-$HOME/.cache/omero-dropbox-ng/wheelhouse}
version=3.6.5
pytag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

mkdir -p "$wheelhouse"
if ls "$wheelhouse"/zeroc_ice-"$version"-"$pytag"-*.whl >/dev/null 2>&1; then
    echo "build-ice-wheel: reusing $(ls "$wheelhouse"/zeroc_ice-"$version"-"$pytag"-*.whl)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "zeroc-ice==$version" -d "$work"
tar -xzf "$work/zeroc-ice-$version.tar.gz" -C "$work"
src="$work/zeroc-ice-$version"

"$python" - "$src" <<'PY'
import pathlib
import sys

src = pathlib.Path(sys.argv[1])


def patch(relative: str, old: str, new: str) -> None:
    path = src / relative
    text = path.read_text()
    if old not in text:
        sys.exit(f"build-ice-wheel: {relative} does not contain the expected line {old!r}; "
                 "is this really the zeroc-ice 3.6.5 sdist?")
    path.write_text(text.replace(old, new, 1))


patch("src/Slice.cpp", "#include <eval.h>\n", "")
patch(
    "src/Util.cpp",
    "    PyFrameObject *f = PyThreadState_GET()->frame;\n"
    "    PyObjectHandle code = PyObject_GetAttrString(reinterpret_cast<PyObject*>(f), STRCAST(\"f_code\"));\n",
    "    PyObjectHandle frame(reinterpret_cast<PyObject*>(PyThreadState_GetFrame(PyThreadState_GET())));\n"
    "    PyObjectHandle code = PyObject_GetAttrString(frame.get(), STRCAST(\"f_code\"));\n",
)
PY

# A private build venv keeps the caller's environment untouched.
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "setuptools<70" wheel
jobs=$(nproc 2>/dev/null || echo 2)
echo "build-ice-wheel: compiling zeroc-ice $version for $pytag with $jobs jobs (takes many minutes)"
(cd "$src" && "$work/venv/bin/python" setup.py --quiet build_ext --parallel "$jobs" bdist_wheel --dist-dir "$work/dist")
cp "$work"/dist/zeroc_ice-*.whl "$wheelhouse"/
echo "build-ice-wheel: built $(ls "$wheelhouse"/zeroc_ice-"$version"-"$pytag"-*.whl)"
