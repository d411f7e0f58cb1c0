#!/usr/bin/env bash
# A Debian 11 (bullseye) glibc 2.31 sysroot for linking the NIF, so that one library loads on
# every EMQX 5.0-6.x image (the 5.0-5.4 images are Debian 11; Debian 12 hosts link against
# 2.36 otherwise). Only the C library's packages are fetched (about 7 MB) from Debian's
# archive and unpacked, no root needed. Idempotent; prints the sysroot's path.
#   scripts/ensure-sysroot.sh     -> .cache/sysroot/bullseye
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.cache/sysroot/bullseye
stamp=$root/.complete-2
if [ -f "$stamp" ]; then echo "$root"; exit 0; fi
work=$PWD/.cache/sysroot/apt
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian bullseye main" > "$work/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
    -o Dir::State::status=/dev/null -o APT::Architecture=amd64
    -o APT::Sandbox::User=root -o Debug::NoLocking=1
)
apt-get "${apt_opts[@]}" -qq update >&2
packages=(libc6 libc6-dev linux-libc-dev libcrypt1 libcrypt-dev libgcc-s1)
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}" >&2)
rm -rf "$root"
mkdir -p "$root"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$root"; done
# Absolute symlinks (libm.so -> /lib/...) would lead the linker back to the host's libraries.
find "$root" -type l -lname '/*' | while read -r link; do
    ln -sfnr "$root$(readlink "$link")" "$link"
done
test -f "$root/usr/lib/x86_64-linux-gnu/libc.so" || { echo "sysroot incomplete" >&2; exit 1; }
touch "$stamp"
echo "$root"
