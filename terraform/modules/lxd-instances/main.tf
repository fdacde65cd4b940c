# One tier of the stack as LXD system containers booting systemd from the base
# image, each with the stack's profile (modules/lxd-profile) and a fixed
# address on the stack's network.
resource "lxd_container" "this" {
  for_each = var.instances

  name     = each.key
  image    = var.image
  profiles = [var.profile]
  limits   = var.limits

  device {
    name = "eth0"
    type = "nic"
    properties = {
      name           = "eth0"
      network        = var.network
      "ipv4.address" = each.value
    }
  }

  # The image has no resolver of its own (systemd-networkd takes the DHCP
  # lease but nothing writes resolv.conf): the bridge's dnsmasq answers.
  file {
    content     = "nameserver ${var.nameserver}\n"
    target_file = "/etc/resolv.conf"
    mode        = "0644"
  }

  # The image's `admin` account (uid 1000) admits the stack's administrator
  # key: Ansible connects over SSH, as it does to EC2.
  file {
    content     = "${join("\n", var.admin_authorized_keys)}\n"
    target_file = "/home/admin/.ssh/authorized_keys"
    uid         = 1000
    gid         = 1000
    mode        = "0600"
  }

  dynamic "device" {
    for_each = var.proxy_devices
    content {
      name = device.value.name
      type = "proxy"
      properties = {
        listen  = device.value.listen
        connect = device.value.connect
        bind    = "host"
      }
    }
  }
}
