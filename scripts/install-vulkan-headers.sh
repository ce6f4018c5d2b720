#!/usr/bin/env bash
# Lay Debian trixie's Vulkan-Headers + Vulkan-Hpp (libvulkan-dev 1.4.309.0-1) and
# SPIRV-Headers (1.6.1+1.4.309.0-1) into a private prefix on a bookworm machine,
# WITHOUT touching the system's apt sources, lists or installed packages.
# Usage: install-vulkan-headers.sh [PREFIX]   (default /opt/vulkan-headers)
set -euo pipefail
PREFIX=${1:-/opt/vulkan-headers}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs"
cat > "$WORK/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
APTALT=(-o Dir::Etc::SourceList="$WORK/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$WORK/lists" -o Dir::Cache="$WORK/cache"
        -o APT::Sandbox::User=root)
apt-get "${APTALT[@]}" update -qq
# Prefer the exact versions this was verified with; if a trixie point release replaced
# them (the mirror keeps only the current version), take whatever trixie has now.
( cd "$WORK/debs" && { apt-get "${APTALT[@]}" download \
      libvulkan-dev=1.4.309.0-1 spirv-headers=1.6.1+1.4.309.0-1 ||
    apt-get "${APTALT[@]}" download libvulkan-dev/trixie spirv-headers/trixie; } )
mkdir -p "$WORK/root"
for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/root"; done
rm -rf "$PREFIX"; mkdir -p "$PREFIX/include" "$PREFIX/share"
cp -a "$WORK/root/usr/include/." "$PREFIX/include/"          # vulkan/ vk_video/ spirv/
cp -a "$WORK/root/usr/share/cmake" "$PREFIX/share/"           # VulkanHeaders + SPIRV-Headers configs
# Deliberately NOT copied: usr/lib/.../libvulkan.so (dangling symlink to trixie's
# libvulkan.so.1) and VulkanLoaderConfig.cmake; the bookworm loader is used instead.
grep -m1 '#define VK_HEADER_VERSION ' "$PREFIX/include/vulkan/vulkan_core.h"
test -f "$PREFIX/include/vulkan/vulkan.hpp"
grep -q 'struct LayerSettingEXT' "$PREFIX/include/vulkan/vulkan_structs.hpp"
echo "Vulkan headers laid in $PREFIX"
