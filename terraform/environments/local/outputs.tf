output "ansible_inventory" {
  description = "The Ansible inventory of this stack; `make tf-apply-local` writes it to inventories/local/hosts.json."
  value       = module.inventory.inventory
}
