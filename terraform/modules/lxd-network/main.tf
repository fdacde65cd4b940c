# A private bridge of the stack's own: its own subnet and name, so two stacks
# (a developer's and a test's) live side by side without touching lxdbr0.
resource "lxd_network" "this" {
  name        = var.name
  description = "flaskfleet stack network ${var.name}"
  type        = "bridge"

  config = {
    "ipv4.address" = "${cidrhost(var.cidr, 1)}/${split("/", var.cidr)[1]}"
    "ipv4.nat"     = tostring(var.nat)
    "ipv6.address" = "none"
  }
}
