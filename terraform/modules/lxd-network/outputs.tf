output "name" {
  description = "Name of the LXD network, for instances' nic devices."
  value       = lxd_network.this.name
}

output "cidr" {
  description = "The network's IPv4 subnet."
  value       = var.cidr
}

output "gateway" {
  description = "The host's address on the network."
  value       = cidrhost(var.cidr, 1)
}
