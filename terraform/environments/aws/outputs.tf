output "ansible_inventory" {
  description = "The Ansible inventory of this stack; `make` writes it to inventories/aws/hosts.json."
  value       = module.inventory.inventory
}
