#!/bin/sh
# Installs the Debian packages the tests use (real udev, D-Bus, udisks2, Samba, FUSE
# filesystems, Chromium, poppler, nginx for benchmarks; qpdf, tidy, a CJK TrueType font and headless
# LibreOffice (the -nogui writer/calc, ~15 s) check the rendered documents) and what `make deb` and
# its tests need (debhelper, lintian, pip; systemd-nspawn for the install tests, qemu-user and
# mmdebstrap for the arm64 package; zbar-tools decodes the share page's QR code, axe-core from npm checks
# every page's accessibility). Idempotent; root only.
set -eu
PKGS="python3-venv udev dbus udisks2 policykit-1 samba smbclient strace dosfstools exfatprogs fdisk
exfat-fuse fusefat ntfs-3g chromium poppler-utils nginx-light fonts-dejavu-core iproute2
util-linux psmisc systemd flac nodejs avahi-daemon avahi-utils
qpdf tidy fonts-droid-fallback libreoffice-writer-nogui libreoffice-calc-nogui rclone
debhelper dpkg-dev lintian binutils python3-pip python3-setuptools python3-wheel man-db
systemd-container qemu-user-static mmdebstrap zbar-tools"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then echo "install-test-deps: need root to install:$missing" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# axe-core (the accessibility checker the browser tests run inside each page), from npm, pinned.
AXE=/opt/steno-test-js/node_modules/axe-core/axe.min.js
command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends npm >/dev/null
if [ ! -e "$AXE" ] || ! grep -q '"version": "4.10.3"' "${AXE%/axe.min.js}/package.json"; then
  npm install --prefix /opt/steno-test-js --no-audit --no-fund --silent axe-core@4.10.3
fi
# exFAT mounts through FUSE here: `mount -t exfat` and udisks need /sbin/mount.exfat.
[ -e /sbin/mount.exfat ] || ln -sf /sbin/mount.exfat-fuse /sbin/mount.exfat
# vfat through fusefat; it must pass blkdev or udisks never sees the mount point.
if [ ! -e /sbin/mount.vfat ] || grep -q fusefat /sbin/mount.vfat 2>/dev/null; then
  cat > /sbin/mount.vfat <<'SH'
#!/bin/sh
# steno-exportd test helper: vfat through fusefat (kernel has no vfat driver here).
spec="$1"; dir="$2"; shift 2; opts=rw
while [ $# -gt 0 ]; do case "$1" in -o) opts="$2"; shift 2;; *) shift;; esac; done
case ",$opts," in *,ro,*) mode=ro;; *) mode=rw+;; esac
exec /usr/bin/fusefat -o "$mode,blkdev,fsname=$spec,subtype=vfat,allow_other" "$spec" "$dir" >/dev/null 2>&1
SH
  chmod +x /sbin/mount.vfat
fi
