# Bake bootagent into a Debian image with Packer's built-in QEMU builder.
# Works with Debian's packer package (1.6.6): HCL2, no required_plugins block.
#
#   scripts/build-deb.sh    # from the repository: dist/bootagent_<version>_all.deb
#   packer build -var base_image=debian-12.qcow2 \
#                -var ssh_private_key_file=~/.ssh/id_ed25519 \
#                -var bootagent_deb=dist/bootagent_0.1.0_all.deb bootagent.pkr.hcl
#
# See README.md beside this file for what the base image must allow, and
# build-local.py for a complete run against the project's own fake IMDS.

variable "base_image" {
  type        = string
  description = "Path to the local Debian 12 disk image (qcow2 or raw) to start from."
}

variable "ssh_username" {
  type        = string
  default     = "packer"
  description = "The user Packer logs in as; it needs passwordless sudo."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key whose public half the base image accepts for ssh_username."
}

variable "delete_build_user" {
  type        = bool
  default     = false
  description = "Remove ssh_username (and its home) at shutdown, e.g. when bootagent made it for this build."
}

variable "bootagent_deb" {
  type        = string
  description = "bootagent's Debian package (scripts/build-deb.sh leaves it in dist/), installed with apt-get."
}

variable "bootagent_config" {
  type        = string
  default     = ""
  description = "Installed as /etc/bootagent/bootagent.yaml; default: bootagent.yaml beside this template."
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm, or tcg where there is no usable /dev/kvm (slower)."
}

variable "fake_imds_port" {
  type        = number
  default     = 0
  description = "When not 0, the guest's IMDS (169.254.169.254:80) and wireserver (168.63.129.16:80) are forwarded to this port on the host, where `bootagent fake-imds` serves them."
}

variable "extra_qemuargs" {
  type        = list(list(string))
  default     = []
  description = "More QEMU arguments, e.g. -kernel/-initrd/-append for a disk without a boot loader."
}

variable "output_directory" {
  type    = string
  default = "output-bootagent"
}

variable "ssh_timeout" {
  type    = string
  default = "15m"
}

locals {
  deb    = "/tmp/bootagent-install/${basename(var.bootagent_deb)}"
  config = var.bootagent_config != "" ? var.bootagent_config : "${path.root}/bootagent.yaml"
  imds_fwd = "cmd:socat STDIO TCP:127.0.0.1:${var.fake_imds_port}"
  # Packer's own -netdev plus, with a fake IMDS, a net holding both Azure
  # addresses (168.0.0.0/7) so they are on link and forwarded to the host.
  netdev = var.fake_imds_port == 0 ? "user,id=user.0,hostfwd=tcp::{{ .SSHHostPort }}-:22" : join(",", [
    "user,id=user.0,net=168.0.0.0/7,hostfwd=tcp::{{ .SSHHostPort }}-:22",
    "guestfwd=tcp:169.254.169.254:80-${local.imds_fwd}",
    "guestfwd=tcp:168.63.129.16:80-${local.imds_fwd}",
  ])
}

source "qemu" "debian" {
  iso_url          = var.base_image
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = false
  format           = "qcow2"
  vm_name          = "debian-12-bootagent.qcow2"
  output_directory = var.output_directory
  accelerator      = var.accelerator
  headless         = true
  memory           = 1024
  cpus             = 2
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  qemuargs = concat([
    ["-netdev", local.netdev],
    ["-device", "virtio-net,netdev=user.0"],
  ], var.extra_qemuargs)
  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.ssh_timeout
  shutdown_command     = var.delete_build_user ? "sudo -n sh -c 'userdel -f -r ${var.ssh_username}; shutdown -P now'" : "sudo -n shutdown -P now"
  shutdown_timeout     = "5m"
}

build {
  sources = ["source.qemu.debian"]

  # 1. When the base already runs bootagent, let this boot's run finish before
  #    anything changes (as with `cloud-init status --wait`). Exit 0 ok, 1 the
  #    run had errors (shown, not fatal: a build VM is no real instance),
  #    3 not finished in time (fatal).
  provisioner "shell" {
    execute_command = "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "set -u",
      "state=$(systemctl show -p ActiveState --value bootagent.service 2>/dev/null || true)",
      "if [ -n \"$state\" ] && [ \"$state\" != inactive ]; then bootagent status --wait --timeout 600; rc=$?; [ $rc -ne 3 ] || exit 1; fi",
      "mkdir -p /tmp/bootagent-install && chown ${var.ssh_username} /tmp/bootagent-install",
    ]
  }

  # 2. The package and the configuration.
  provisioner "file" {
    source      = var.bootagent_deb
    destination = local.deb
  }
  provisioner "file" {
    source      = local.config
    destination = "/tmp/bootagent-install/bootagent.yaml"
  }

  # 3. Install the package as any other: apt-get pulls Debian's python3-requests,
  #    python3-yaml, python3-jinja2 (and the recommended python3-systemd) when the
  #    image lacks them. It enables bootagent.service and bootagent-host-keys.service
  #    (which makes the SSH host keys early in boot, beside the rest of it) and
  #    starts neither; over an installed bootagent it is an upgrade, which does not
  #    run the oneshot again either. Then the configuration.
  provisioner "shell" {
    execute_command = "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "set -eu",
      "apt-get install -y --reinstall ${local.deb} || { apt-get update && apt-get install -y --reinstall ${local.deb}; }",
      "install -D -m 0644 /tmp/bootagent-install/bootagent.yaml /etc/bootagent/bootagent.yaml",
      "systemctl is-enabled bootagent.service bootagent-host-keys.service",
      "rm -rf /tmp/bootagent-install",
    ]
  }

  # 4. Wait for this boot's run (a no-op when it finished in step 1), then make
  #    the image a first boot again: forget the instance, empty machine-id, no
  #    SSH host keys (every VM made from the image gets its own).
  provisioner "shell" {
    execute_command = "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "set -u",
      "state=$(systemctl show -p ActiveState --value bootagent.service)",
      "if [ \"$state\" != inactive ]; then bootagent status --wait --timeout 600; [ $? -ne 3 ] || exit 1; fi",
      "bootagent clean --logs --machine-id --ssh-host-keys",
      "sync",
    ]
  }
}
