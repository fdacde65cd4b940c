variable "groups" {
  description = "Hosts per inventory group: every one of lb, app, redis, queue, worker, postgres_primary, postgres_replica, monitor and restore (the restore drill's scratch VM), each a list of hosts with the name Ansible knows them by, the address Ansible connects to, the private address services bind to, and the ID of its data volume (null: none, the data lives on the root file system)."
  type = map(list(object({
    name           = string
    ansible_host   = string
    private_ip     = string
    data_volume_id = string
  })))

  validation {
    condition     = join(",", sort(keys(var.groups))) == "app,lb,monitor,postgres_primary,postgres_replica,queue,redis,restore,worker"
    error_message = "The groups must be exactly lb, app, redis, queue, worker, postgres_primary, postgres_replica, monitor and restore."
  }

  validation {
    condition     = alltrue([for group, hosts in var.groups : length(hosts) > 0 if !contains(["worker", "restore"], group)])
    error_message = "Every group but worker and restore (which may be empty: no background workers, no restore drill VM) needs at least one host."
  }

  validation {
    condition     = alltrue([for hosts in values(var.groups) : alltrue([for host in hosts : can(cidrhost("${host.private_ip}/32", 0))])])
    error_message = "Every host's private_ip must be an IPv4 address."
  }
}

variable "vars" {
  description = "Variables for the whole inventory (group all) that only Terraform knows, such as the environment name or a bastion address. Connection settings that do not depend on Terraform live in inventories/<env>/group_vars/."
  type        = map(string)
  default     = {}
}
