output "hosts" {
  description = "The tier's instances in name order: name and the IPv4 address the network gave them."
  value = [
    for name in sort(keys(var.instances)) : {
      name       = lxd_container.this[name].name
      private_ip = lxd_container.this[name].ipv4_address
    }
  ]
}
