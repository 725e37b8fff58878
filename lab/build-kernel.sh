#!/bin/sh
# Builds the lab's iommufd kernel: tinyconfig + lab/iommufd-kernel.config, vmlinux only
# (QEMU boots the ELF through its PVH note, no bzImage needed).
# Usage: build-kernel.sh SOURCE_TARBALL FRAGMENT OUT_DIR
# Called by `cargo xtask lab --kernel iommufd` (which picks OUT_DIR from a hash of the
# inputs); usable by hand. Writes OUT_DIR/vmlinux, OUT_DIR/config, OUT_DIR/build-seconds.
set -eu
tarball=$1 fragment=$2 out=$3
jobs=${LAB_KERNEL_JOBS:-$(nproc)}
work="$out.build"
start=$(date +%s)
rm -rf "$work"
mkdir -p "$work"
echo "lab kernel: extracting $tarball"
tar -xJf "$tarball" -C "$work" --strip-components=1
cd "$work"
make -s tinyconfig
./scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig
# Every line of the fragment must have survived olddefconfig (a missing dependency
# drops a symbol silently; better to fail now than after a long build).
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qx "$line" .config || { echo "lab kernel: $line did not stick" >&2; missing=1; } ;;
        "# CONFIG_"*" is not set")
            sym=${line#"# "}; sym=${sym%" is not set"}
            if grep -q "^$sym=" .config; then echo "lab kernel: $sym should be unset" >&2; missing=1; fi ;;
    esac
done < "$fragment"
[ "$missing" = 0 ] || { echo "lab kernel: config check failed, see $work/.config" >&2; exit 1; }
echo "lab kernel: building vmlinux with -j$jobs"
make -s -j"$jobs" vmlinux
mkdir -p "$out"
cp vmlinux "$out/vmlinux"
cp .config "$out/config"
end=$(date +%s)
echo $((end - start)) > "$out/build-seconds"
cd / && rm -rf "$work"
echo "lab kernel: done in $((end - start)) s -> $out/vmlinux"
