#!/bin/sh
# `make deb [ARCH=arm64]`: builds steno-exportd_<version>_<arch>.deb with debhelper (debian/).
#  1. fetches the pinned wheels for ARCH from PyPI, hash-checked (packaging/requirements.lock; kept in
#     build/wheelhouse-ARCH for the next build);
#  2. copies the source tree to build/deb-ARCH/ (dpkg-buildpackage writes beside the tree);
#  3. builds offline there (another ARCH is a cross build: no compiler is involved);
#  4. checks the .deb with lintian (errors fail the build; LINTIAN=no skips it).
# The .deb lands in DEB_OUT (default: the top of the source tree).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
arch=${1:-$(dpkg --print-architecture)}
out=${DEB_OUT:-$repo}
work=$repo/build/deb-$arch
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
deb=steno-exportd_${version}_${arch}.deb

python3 "$repo/packaging/privenv.py" fetch --arch "$arch" --dest "$repo/build/wheelhouse-$arch"

rm -rf "$work"
mkdir -p "$work/src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
        | (cd "$repo" && tar --null --ignore-failed-read -T - -cf -) 2>/dev/null | tar -xf - -C "$work/src"
else
    (cd "$repo" && tar --exclude=./.venv --exclude=./build --exclude=./demo --exclude='./*.deb' -cf - .) \
        | tar -xf - -C "$work/src"
fi
cp -a "$repo/build/wheelhouse-$arch" "$work/src/debian/wheelhouse"

cross=""
[ "$arch" = "$(dpkg --print-architecture)" ] || cross="-d"
(cd "$work/src" && dpkg-buildpackage -b -us -uc --host-arch "$arch" $cross) > "$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed; the whole log: $work/build.log" >&2
    exit 1
}
mkdir -p "$out"
mv "$work/$deb" "$out/$deb"
echo "built $out/$deb"

if [ "${LINTIAN:-yes}" != no ]; then
    lintian --fail-on error "$out/$deb"
fi
