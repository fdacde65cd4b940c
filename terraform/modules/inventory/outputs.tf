output "inventory" {
  description = "The Ansible inventory as an object in the YAML inventory plugin's layout; `make` writes it to inventories/<env>/hosts.json."
  value       = local.inventory
}
