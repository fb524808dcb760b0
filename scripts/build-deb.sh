#!/usr/bin/env bash
# Build the Debian package: dist/bootagent_<version>_all.deb.
#   scripts/build-deb.sh               install missing build tools (apt-get), build, lintian
#   scripts/build-deb.sh --no-lintian  skip lintian (the tests run it themselves)
#   scripts/build-deb.sh --if-changed  keep dist/'s package when it was built from these files
# The build runs Debian's own `dpkg-buildpackage -us -uc -b` in a clean export of the
# working tree: the files git tracks plus new ones it does not ignore, as they are now
# (no .venv, build/, dist/ or __pycache__). Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

lintian=yes
if_changed=no
for arg in "$@"; do
    case "$arg" in
        --no-lintian) lintian=no ;;
        --if-changed) if_changed=yes ;;
        -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "build-deb: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

# Debian's tools, with Debian's python3: a pyenv or venv python3 earlier on PATH
# would shadow /usr/bin/python3 and pybuild would miss python3-build.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

build_deps=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
            python3-setuptools git)
[ "$lintian" = yes ] && build_deps+=(lintian)
missing=()
for p in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build-deb: missing build tools: as root, apt-get install ${missing[*]}" >&2
        exit 2
    fi
    echo "build-deb: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "build-deb: $repo is not a git checkout; in an unpacked source tree run" \
         "dpkg-buildpackage -us -uc -b there" >&2
    exit 2
fi

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
deb="bootagent_${version}_all.deb"
mkdir -p dist

# What the export holds, file by file (path, mode, content): the package is rebuilt
# only when this changes (with --if-changed).
list_files() {
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done | sort -z
}
stamp=$(list_files | xargs -0 stat -c '%a %n' | sha256sum | cut -d' ' -f1)-$(
        list_files | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$if_changed" = yes ] && [ -f "dist/$deb" ] && [ -f "dist/$deb.source" ] &&
   [ "$(cat "dist/$deb.source")" = "$stamp" ]; then
    echo "build-deb: dist/$deb is up to date" >&2
    echo "$repo/dist/$deb"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bootagent-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/bootagent-$version"
mkdir "$src"
list_files | tar --null -T - -cf - | tar -xf - -C "$src"

echo "build-deb: dpkg-buildpackage -us -uc -b (log: dist/build-deb.log)" >&2
if ! (cd "$src" && env -i PATH="$PATH" HOME="${HOME:-/root}" LANG=C.UTF-8 \
          dpkg-buildpackage -us -uc -b) > dist/build-deb.log 2>&1; then
    tail -n 30 dist/build-deb.log >&2
    echo "build-deb: dpkg-buildpackage failed (whole log: dist/build-deb.log)" >&2
    exit 1
fi
if [ "$lintian" = yes ]; then
    echo "build-deb: lintian $deb" >&2
    # Exit non-zero on an error; warnings are shown (README: "Installing the Debian package").
    rc=0
    lintian --fail-on error "$work/$deb" > "$work/lintian.txt" 2>&1 || rc=$?
    grep -v 'running with root privileges' "$work/lintian.txt" >&2 || true
    [ "$rc" = 0 ] || { echo "build-deb: lintian found errors" >&2; exit 1; }
fi
cp "$work/$deb" "dist/$deb.tmp"
mv "dist/$deb.tmp" "dist/$deb"
printf '%s\n' "$stamp" > "dist/$deb.source"
echo "$repo/dist/$deb"
