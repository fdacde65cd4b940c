variable "name" {
  description = "Environment name: prefixes every instance and names the bridge (<name>-br), so two stacks can run side by side."
  type        = string
  default     = "ff"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,10}[a-z0-9]$", var.name))
    error_message = "The environment name must be 2-12 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'."
  }
}

variable "network_cidr" {
  description = "IPv4 subnet of the stack's own bridge (/16 to /24); must not overlap lxdbr0, Docker's networks or another stack's."
  type        = string
  default     = "10.118.10.0/24"

  validation {
    condition     = can(cidrhost(var.network_cidr, 1)) && can(regex("^[0-9.]+/([0-9]+)$", var.network_cidr)) && try(tonumber(split("/", var.network_cidr)[1]) >= 16 && tonumber(split("/", var.network_cidr)[1]) <= 24, false)
    error_message = "The network CIDR must be an IPv4 subnet between /16 and /24, e.g. 10.118.10.0/24."
  }
}

variable "app_count" {
  description = "Number of application servers."
  type        = number
  default     = 2

  validation {
    condition     = var.app_count >= 1 && var.app_count <= 50 && floor(var.app_count) == var.app_count
    error_message = "The app count must be a whole number from 1 to 50."
  }
}

variable "worker_count" {
  description = "Number of background (Celery) workers; 0 runs none (tasks wait in the queue)."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_count >= 0 && var.worker_count <= 50 && floor(var.worker_count) == var.worker_count
    error_message = "The worker count must be a whole number from 0 to 50."
  }
}

variable "restore_count" {
  description = "Whether the scratch VM of the point-in-time restore drill (<name>-restore, inventory group restore) exists: 1 or 0."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 1], var.restore_count)
    error_message = "The restore count must be 0 (no restore drill VM) or 1."
  }
}

variable "lb_http_port" {
  description = "Port on the host's 127.0.0.1 that forwards to port 80 on the load balancer's private address."
  type        = number
  default     = 8080

  validation {
    condition     = var.lb_http_port >= 1024 && var.lb_http_port <= 65535 && floor(var.lb_http_port) == var.lb_http_port
    error_message = "The load balancer's host port must be a whole number from 1024 to 65535."
  }
}

variable "prometheus_host_port" {
  description = "Port on the host's 127.0.0.1 that forwards to Prometheus (9090) on the monitor's private address."
  type        = number
  default     = 9090

  validation {
    condition     = var.prometheus_host_port >= 1024 && var.prometheus_host_port <= 65535 && floor(var.prometheus_host_port) == var.prometheus_host_port
    error_message = "Prometheus' host port must be a whole number from 1024 to 65535."
  }
}

variable "alertmanager_host_port" {
  description = "Port on the host's 127.0.0.1 that forwards to Alertmanager (9093) on the monitor's private address."
  type        = number
  default     = 9093

  validation {
    condition     = var.alertmanager_host_port >= 1024 && var.alertmanager_host_port <= 65535 && floor(var.alertmanager_host_port) == var.alertmanager_host_port
    error_message = "Alertmanager's host port must be a whole number from 1024 to 65535."
  }
}

variable "image" {
  description = "LXD image the instances start from; scripts/setup-lxd.sh imports the base image under the alias flaskfleet-base."
  type        = string
  default     = "flaskfleet-base"

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "The image must not be empty."
  }
}

variable "storage_pool" {
  description = "LXD storage pool of the instances' root disks."
  type        = string
  default     = "default"

  validation {
    condition     = length(trimspace(var.storage_pool)) > 0
    error_message = "The storage pool must not be empty."
  }
}

variable "admin_ssh_public_key" {
  description = "OpenSSH public key (one line) of the stack's administrator: Ansible logs in as `admin` with it. scripts/stack.sh makes one per stack in .secrets/<name>/ssh/."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( [^\\n]*)?$", trimspace(var.admin_ssh_public_key)))
    error_message = "The admin key must be a single OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-*), e.g. the contents of id_ed25519.pub."
  }
}
