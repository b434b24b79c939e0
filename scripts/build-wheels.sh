#!/usr/bin/env bash
# Build the manylinux2014 wheel (glibc >= 2.17: RHEL/Rocky 8 and 9, Debian >= 8, Ubuntu >= 14.04),
# check it with auditwheel, and check that it installs and imports in a fresh virtualenv.
#
#   scripts/build-wheels.sh [OUT_DIR]          (default: dist/; PYTHON=... picks the interpreter)
#
# One abi3 wheel serves every CPython >= 3.10. Needs: cargo and rustc >= 1.91 on PATH (rustup or
# the distribution; the locked notify-types 2.3 needs 1.91, pyo3 0.30 needs 1.85) and Python >= 3.10
# with venv and pip. maturin, ziglang (zig links against glibc 2.17 symbols, so no old build image
# is needed) and auditwheel come from PyPI into a virtualenv in target/; crates come from crates.io.
# The compiled crates stay in target/ (target/x86_64-unknown-linux-gnu/): a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(command -v "${PYTHON:-python3}") || { echo "build-wheels: no ${PYTHON:-python3} on PATH" >&2; exit 1; }
out=$(realpath -m "${1:-dist}")
min_rust=1.91
# Versions checked together; a newer zig can change what `zig cc` accepts.
build_tools=("maturin>=1.9,<2" "ziglang>=0.15,<0.18" "auditwheel>=6.1,<7")
export PIP_DISABLE_PIP_VERSION_CHECK=1
# maturin's build backend otherwise downloads a whole Rust toolchain (~700 MB) when cargo is missing.
export MATURIN_NO_INSTALL_RUST=1
started=$(date +%s)

die() {
    echo "build-wheels: $*" >&2
    exit 1
}

command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 ||
    die "cargo and rustc (Rust >= $min_rust) are not on PATH. Install Rust with rustup (https://rustup.rs)" \
        "or your distribution's rustc and cargo packages, then run this again."
rust_version=$(rustc --version | awk '{print $2}')
"$python" - "$rust_version" "$min_rust" <<'PY' || exit 1
import sys

have, need = (tuple(int(p) for p in v.split("-")[0].split(".")[:2]) for v in sys.argv[1:3])
if have < need:
    sys.exit(f"build-wheels: rustc {sys.argv[1]} is too old: the locked crates need Rust >= {sys.argv[2]} "
             "(rustup update, or a newer distribution package)")
PY

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Kept in target/ across runs: the same paths to zig and Python keep cargo's build of the crates valid.
tools=$(realpath -m "${CARGO_TARGET_DIR:-target}/build-wheels-tools")
echo "== build tools into a private virtualenv ($tools): ${build_tools[*]}"
[ -x "$tools/bin/python" ] || "$python" -m venv "$tools"
"$tools/bin/python" -m pip install -q "${build_tools[@]}"
export PATH="$tools/bin:$PATH"
echo "build tools: $(maturin --version), zig $(python -m ziglang version), $(auditwheel --version | cut -d' ' -f1-2)"

echo "== maturin build --zig --compatibility manylinux2014 (rustc $rust_version)"
mkdir -p "$out"
rm -f "$out"/omero_dropbox_ng-*-manylinux*.whl
maturin build --release --locked --zig --compatibility manylinux2014 --interpreter "$python" --out "$out"
shopt -s nullglob
wheels=("$out"/omero_dropbox_ng-*-cp310-abi3-manylinux*.whl)
[ ${#wheels[@]} -eq 1 ] || die "expected one cp310-abi3 manylinux wheel in $out, found: ${wheels[*]:-none}"
wheel=${wheels[0]}
case $(basename "$wheel") in
*manylinux_2_17_x86_64.manylinux2014_x86_64.whl | *manylinux2014_x86_64.manylinux_2_17_x86_64.whl) ;;
*) die "$(basename "$wheel") is not tagged manylinux2014 / manylinux_2_17" ;;
esac

echo "== auditwheel show"
report=$(auditwheel show "$wheel")
echo "$report"
tag=$(echo "$report" | tr -s ' \n' ' ' | grep -o 'consistent with the following platform tag: "[^"]*"' | cut -d'"' -f2)
[ "$tag" = manylinux_2_17_x86_64 ] ||
    die "auditwheel: $(basename "$wheel") needs a newer platform than manylinux_2_17_x86_64 (found: ${tag:-none})"

echo "== install into a fresh virtualenv and import the native module"
"$python" -m venv "$work/try"
"$work/try/bin/python" -m pip install -q "$wheel"
# From an empty directory, so that the repository's python/ cannot stand in for the wheel.
(cd "$work" && "$work/try/bin/python" -c "import omero_dropbox._native as n; print('imported', n.__file__)")
(cd "$work" && "$work/try/bin/omero-dropbox" --help >/dev/null)

echo "build-wheels: $wheel"
echo "build-wheels: tag manylinux_2_17_x86_64 (manylinux2014), checked by auditwheel; built in $(($(date +%s) - started)) s"
