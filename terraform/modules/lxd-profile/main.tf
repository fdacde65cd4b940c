# What makes an LXD system container a "VM" of the stack: systemd as PID 1
# with what it and the roles' units need, and a root disk. The stack's
# instances use this profile only, so whatever the host's default profile
# carries (lxdbr0, cloud-init, ...) stays out of the stack.
resource "lxd_profile" "this" {
  name        = var.name
  description = "flaskfleet VM: systemd system container"

  config = {
    # systemd's container interface wants /sys read-only: with /sys writable
    # systemd-networkd waits for udev (which does not run in a container) and
    # never configures eth0, so the instance would get no DHCP address.
    "raw.lxc" = "lxc.mount.auto = sys:ro"
    # Lets systemd mount a fresh /proc for sandboxed units (ProtectSystem=,
    # PrivateTmp=, ...), which LXD otherwise refuses in an unprivileged
    # container.
    "security.nesting" = "true"
  }

  device {
    name = "root"
    type = "disk"
    properties = {
      path = "/"
      pool = var.storage_pool
    }
  }
}
