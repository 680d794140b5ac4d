#!/usr/bin/env bash
# install-deps.sh: install the Debian packages that kiln's image builder and
# VM tests need on the build host. Idempotent: installs only what is missing,
# and runs `apt-get update` only when something is missing.
#
#   qemu-system-x86  qemu-system-x86_64 (pulls seabios and ipxe-qemu: PXE ROMs)
#   qemu-utils       qemu-img (qcow2 images)
#   ovmf             UEFI firmware for QEMU (UEFI ISO boot tests)
#   xorriso          ISO 9660 authoring
#   isolinux         isolinux.bin + isohdpfx.bin (BIOS-bootable hybrid ISO)
#   syslinux-common  ldlinux.c32 and friends
#   syslinux         `syslinux --offset` installs the boot loader on a FAT image via mtools
#   mtools           FAT images without loop mounts (mformat, mcopy)
#   grub-common, grub-efi-amd64-bin
#                    grub-mkstandalone: GRUB's BOOTX64.EFI for UEFI boot of the
#                    ISO and the disk images
#   e2fsprogs        mke2fs (state disk images)
#   squashfs-tools   mksquashfs: the image's compressed read-only root
#   zstd             initramfs compression checks
#   cpio             initramfs listing/extraction in tests
#   kmod             modinfo/depmod for module checks
#   nftables         nft, copied into images for kube-proxy and the pod network
#   tftp-hpa         a real TFTP client for the PXE server's tests
#   ipxe             undionly.kpxe and ipxe.efi, served by `kiln pxe serve`
#   dnsmasq-base     a plain DHCP server beside kiln's proxyDHCP in the PXE VM test
#   iproute2         ip netns, bridges and taps for the PXE tests
#   libseccomp-dev, pkg-config
#                    runc is built with cgo and seccomp, linked statically
#   busybox-static   the busybox of make conformance's test images
#   ca-certificates  the public CAs the images carry (containerd checks registries with them)
set -euo pipefail

PACKAGES=(
	qemu-system-x86
	qemu-utils
	ovmf
	xorriso
	isolinux
	syslinux-common
	syslinux
	mtools
	grub-common
	grub-efi-amd64-bin
	e2fsprogs
	squashfs-tools
	zstd
	cpio
	kmod
	nftables
	tftp-hpa
	ipxe
	dnsmasq-base
	iproute2
	libseccomp-dev
	pkg-config
	busybox-static
	ca-certificates
)

if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	if [ "$status" != "installed" ]; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#PACKAGES[@]} packages already installed"
	exit 0
fi

echo "install-deps: installing: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-deps: done"
