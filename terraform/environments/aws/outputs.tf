output "ansible_inventory" {
  description = "The Ansible inventory of this stack: `tofu output -json ansible_inventory > ../../../inventories/aws/hosts.json` (see README.md)."
  value       = module.inventory.inventory
}

output "lb_url" {
  description = "Where the stack serves its users: https://<public_domain>, once the domain's DNS points at lb_public_ip and the playbook has configured nginx."
  value       = local.lb_url
}

output "lb_public_ip" {
  description = "The load balancer's Elastic IP: the address public_domain's DNS A record must name (ACME HTTP-01 reaches it there), and the SSH bastion."
  value       = module.tier["lb"].hosts[0].public_ip
}

output "pgbackrest_bucket" {
  description = "The S3 bucket holding pgBackRest's repository (backups and archived WAL); it outlives a destroy while it holds any (README.md, teardown)."
  value       = module.backup_repository.bucket
}
