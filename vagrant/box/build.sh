#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) box for vagrant-libvirt on this machine, from Debian's mirror alone (no box
# registry), and adds it to Vagrant as pynode/debian12:
#
#   debootstrap (systemd, Debian's kernel, GRUB, ssh, Python)  ->  a raw disk (one ext4 partition made by
#   mkfs.ext4 -d, GRUB in the MBR; no loop device, no mount)  ->  box.img (qcow2)  ->  metadata.json + Vagrantfile
#   ->  a .box  ->  vagrant box add (versioned)
#
# The kernel is Debian's linux-image-amd64, which has ip_vs (with its schedulers), br_netfilter, nf_tables and
# dummy as modules; the script checks they are there. The box also carries a flat apt repository of the
# packages the ansible roles install (and ipvsadm, ipset, curl for tests), at /srv/pynode-debs, which its
# apt reads: the VMs install everything with no network beyond the cluster's.
#
# Cached under ${PYNODE_CACHE:-~/.cache/pynode}/vagrant, keyed by this script's content: a second run with
# the box already added does nothing. Needs root (debootstrap), debootstrap, qemu-img
# (qemu-utils), dpkg-scanpackages (dpkg-dev), vagrant: `make vagrant-deps`.
#
#   vagrant/box/build.sh            build if needed, add to vagrant if needed, print the .box path
#   vagrant/box/build.sh --rebuild  build again even if cached
set -euo pipefail

RELEASE=bookworm
MIRROR=${PYNODE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BOX_NAME=${PYNODE_BOX:-pynode/debian12}
DISK_GB=20
CACHE=${PYNODE_CACHE:-$HOME/.cache/pynode}/vagrant
# What a bare Vagrant box has: systemd, Debian's kernel and GRUB, ssh and sudo for the vagrant user,
# Python for ansible.
BASE_PACKAGES=systemd,systemd-sysv,dbus,udev,linux-image-amd64,grub-pc,initramfs-tools,openssh-server,sudo,python3,iproute2,ca-certificates,procps,kmod,e2fsprogs
# What the roles install (ansible/roles/*/defaults; the same list as localcluster/machine.py's ROLE_PACKAGES),
# plus the tools the VM tests and the upstream kube-proxy's IPVS mode use.
REPO_PACKAGES="containerd runc containernetworking-plugins iptables conntrack ethtool socat kmod python3 python3-venv \
python3-packaging python3-apt ipvsadm ipset curl"
# The kernel modules the VMs need; the build fails if the kernel lacks one.
MODULES="ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh br_netfilter nf_tables dummy overlay xt_ipvs"

rebuild=false
case "${1:-}" in
  --rebuild) rebuild=true ;;
  "") ;;
  *) echo "usage: $0 [--rebuild]" >&2; exit 2 ;;
esac

log() { echo "[box] $*" >&2; }
die() { echo "[box] error: $*" >&2; exit 1; }
trap 'echo "[box] error: line $LINENO failed: $BASH_COMMAND" >&2' ERR

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it)"
for tool in debootstrap qemu-img dpkg-scanpackages sfdisk mkfs.ext4 vagrant; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (make vagrant-deps)"
done

digest=$(sha256sum "$0" | cut -c1-12)
box="$CACHE/debian12-$digest.box"
# A box version that changes with the recipe: vagrant-libvirt names the volume it uploads to its storage pool
# after the box's name and version, so a rebuilt box must not reuse an older one's volume.
version="12.0.$((16#${digest:0:7}))"

if [ -f "$box" ] && ! $rebuild; then
  log "cached: $box"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/pynode-box.XXXXXX")
  root="$work/root"
  cleanup() {
    set +e
    for m in dev/pts dev proc sys; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
    rm -rf "$work"
  }
  trap cleanup EXIT
  started=$(date +%s)

  log "debootstrap $RELEASE with Debian's kernel into $root (a few minutes)"
  mkdir -p "$CACHE/debootstrap"   # the downloaded packages, kept for the next build
  debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" --include="$BASE_PACKAGES" "$RELEASE" "$root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

  kver=$(basename "$(ls -d "$root"/lib/modules/*)")
  for m in $MODULES; do
    find "$root/lib/modules/$kver" -name "$m.ko*" | grep -q . || die "kernel $kver has no module $m"
  done
  log "kernel $kver has: $MODULES"

  log "package repository for the roles: $REPO_PACKAGES"
  mkdir -p "$root/srv/pynode-debs/partial"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  echo "deb $MIRROR $RELEASE main" >"$root/etc/apt/sources.list"
  mount -t proc proc "$root/proc"
  # shellcheck disable=SC2086  # the package list is words
  chroot "$root" sh -c "apt-get update -qq && apt-get install -qq --download-only --no-install-recommends \
    -o Dir::Cache::archives=/srv/pynode-debs $REPO_PACKAGES" >"$work/repo.log" 2>&1 \
    || { tail -20 "$work/repo.log" >&2; die "downloading the packages failed"; }
  umount "$root/proc"
  rm -rf "$root/srv/pynode-debs/partial" "$root/srv/pynode-debs/lock"
  (cd "$root/srv/pynode-debs" && dpkg-scanpackages --multiversion . 2>/dev/null >Packages)
  echo "deb [trusted=yes] file:/srv/pynode-debs ./" >"$root/etc/apt/sources.list"
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/99pynode-local"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb

  log "configuring the image (vagrant user, ssh, networkd, serial console)"
  echo "localhost" >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
  printf 'LABEL=pynode-root / ext4 errors=remount-ro 0 1\n' >"$root/etc/fstab"
  : >"$root/etc/machine-id"          # a new one at first boot
  rm -f "$root/var/lib/dbus/machine-id"
  printf 'nameserver 127.0.0.1\n' >"$root/etc/resolv.conf"   # no resolver: the VMs reach the cluster by address
  chroot "$root" useradd --create-home --shell /bin/bash --user-group vagrant
  echo "vagrant:vagrant" | chroot "$root" chpasswd
  printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$root/etc/sudoers.d/vagrant"
  chmod 0440 "$root/etc/sudoers.d/vagrant"
  install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
  # Vagrant's well-known insecure key, which `vagrant up` replaces with a key of its own at the first boot.
  key=$( (find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant -path '*/vagrant-*/keys/vagrant.pub' \
    2>/dev/null || true) | sort | tail -1)
  [ -n "$key" ] || die "no vagrant.pub (Vagrant's insecure public key) in Vagrant's installation"
  install -m 0600 -o 1000 -g 1000 "$key" "$root/home/vagrant/.ssh/authorized_keys"
  printf 'UseDNS no\n' >"$root/etc/ssh/sshd_config.d/pynode.conf"
  # Host keys made at the first boot, so that two VMs from this box do not share them.
  rm -f "$root"/etc/ssh/ssh_host_*
  cat >"$root/etc/systemd/system/pynode-ssh-keygen.service" <<'EOF'
[Unit]
Description=Create the ssh host keys at the first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
  cat >"$root/etc/systemd/network/10-eth.network" <<'EOF'
# The first NIC takes its address by DHCP (vagrant-libvirt's management network, VirtualBox's NAT).
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
UseDNS=false
EOF
  cat >"$root/etc/systemd/network/20-eth.network" <<'EOF'
# Further NICs are configured by Vagrant (private_network) or stay down.
[Match]
Name=eth[1-9]

[Link]
Unmanaged=yes
EOF
  # Routes and addresses others add (kube-proxy's, the node's pod routes) are theirs: networkd leaves them alone.
  install -d "$root/etc/systemd/networkd.conf.d"
  printf '[Network]\nManageForeignRoutes=no\nManageForeignRoutingPolicyRules=no\n' \
    >"$root/etc/systemd/networkd.conf.d/pynode.conf"
  chroot "$root" systemctl enable systemd-networkd.service pynode-ssh-keygen.service >/dev/null 2>&1
  chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1
  # A poweroff with pods running takes seconds (a container's PID 1 ignores SIGTERM), not 90.
  install -d "$root/etc/systemd/system.conf.d"
  printf '[Manager]\nDefaultTimeoutStopSec=15s\n' >"$root/etc/systemd/system.conf.d/pynode-box.conf"

  log "disk image: ${DISK_GB} GiB sparse, one ext4 partition filled from the tree, GRUB in the MBR"
  # No loop device nor mount: mkfs.ext4 fills the partition from the tree at its offset in the file, and GRUB's
  # boot.img and core.img (made by the image's own grub-mkimage) go where grub-install would put them.
  cat >"$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
  # The first boot's grub.cfg; a kernel update in the VM runs update-grub, which writes Debian's own from the above.
  install -d "$root/boot/grub/i386-pc"
  cp "$root"/usr/lib/grub/i386-pc/*.mod "$root"/usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
  cat >"$root/boot/grub/grub.cfg" <<'EOF'
serial --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=0
search --no-floppy --label pynode-root --set=root
linux /vmlinuz root=LABEL=pynode-root ro console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0
initrd /initrd.img
boot
EOF
  for f in vmlinuz initrd.img; do [ -e "$root/$f" ] || die "no /$f in the image"; done
  chroot "$root" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal linux search search_label serial terminal configfile echo test
  mv "$root/boot/grub/i386-pc/core.img" "$work/core.img"
  raw="$work/disk.raw"
  truncate -s "${DISK_GB}G" "$raw"
  echo 'start=2048, type=83, bootable' | sfdisk --quiet "$raw"
  mkfs.ext4 -q -L pynode-root -E offset=$((2048 * 512)) -d "$root" "$raw" "$((DISK_GB * 1024 * 1024 - 1024))k"
  # boot.img without its last 72 bytes (the partition table), core.img from sector 1, where boot.img looks.
  dd if="$root/usr/lib/grub/i386-pc/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
  [ "$(stat -c %s "$work/core.img")" -le $((2047 * 512)) ] || die "core.img does not fit before the partition"
  dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

  log "box: qcow2, metadata.json, Vagrantfile"
  mkdir -p "$work/box"
  qemu-img convert -f raw -O qcow2 "$raw" "$work/box/box.img"
  rm -f "$raw"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$DISK_GB" >"$work/box/metadata.json"
  cat >"$work/box/Vagrantfile" <<'EOF'
# The box's defaults (pynode's vagrant/box/build.sh): a serial console, virtio disk and NIC.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
  end
end
EOF
  mkdir -p "$CACHE"
  tar -C "$work/box" -cf "$box.tmp" metadata.json Vagrantfile box.img
  mv "$box.tmp" "$box"
  log "built $box ($(du -h "$box" | cut -f1)) in $(( $(date +%s) - started )) s"
fi

# Added under a version of its own (see above) through a one-version catalog, so `vagrant box list` shows it.
if ! vagrant box list 2>/dev/null | grep -q "^$BOX_NAME *(libvirt, $version)"; then
  catalog="$CACHE/debian12-$digest.json"
  cat >"$catalog" <<EOF
{"name": "$BOX_NAME", "description": "Debian 12 built by pynode's vagrant/box/build.sh",
 "versions": [{"version": "$version", "providers": [{"name": "libvirt", "url": "file://$box",
   "checksum_type": "sha256", "checksum": "$(sha256sum "$box" | cut -d' ' -f1)"}]}]}
EOF
  log "vagrant box add $BOX_NAME $version"
  vagrant box add --force "$catalog" >&2
fi
echo "$box"
