variable "name" {
  description = "Name prefix of the security groups."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name))
    error_message = "The name must be 1-31 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC the security groups belong to."
  type        = string

  validation {
    condition     = length(trimspace(var.vpc_id)) > 0
    error_message = "The VPC ID must not be empty."
  }
}

variable "public_ingress_cidrs" {
  description = "Who may reach the load balancer on 443 (HTTPS) and 80 (the HTTP->HTTPS redirect and ACME HTTP-01); the internet by default, which ACME HTTP-01 validation needs."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.public_ingress_cidrs) > 0 && alltrue([for cidr in var.public_ingress_cidrs : can(cidrnetmask(cidr))])
    error_message = "Give at least one IPv4 CIDR, e.g. 0.0.0.0/0."
  }
}

variable "admin_cidrs" {
  description = "Who may SSH to the load balancer, the stack's bastion (e.g. the office's or VPN's address block)."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for cidr in var.admin_cidrs : can(cidrnetmask(cidr))])
    error_message = "Give at least one IPv4 CIDR for SSH, e.g. 203.0.113.0/24."
  }

  validation {
    condition     = alltrue([for cidr in var.admin_cidrs : !can(regex("/0$", cidr))])
    error_message = "SSH must not be open to the whole internet: narrow the admin CIDR."
  }
}

variable "service_ports" {
  description = "The ports the services listen on inside the VPC: app (the application servers, for the load balancer and the monitor), redis (the cache and the task queue), postgresql, worker_metrics, the exporters (node_exporter, postgres_exporter, redis_exporter, nginx_exporter), prometheus, alertmanager and journal_remote (on the monitor), pgbackrest (pgBackRest's TLS server, on the monitor and the databases), etcd_client and etcd_peer (etcd, on the databases and the monitor), patroni (Patroni's REST API, on the databases). The roles own them; the playbook sets them in group_vars/all/ports.yml."
  type = object({
    app               = number
    redis             = number
    postgresql        = number
    worker_metrics    = number
    node_exporter     = number
    postgres_exporter = number
    redis_exporter    = number
    nginx_exporter    = number
    prometheus        = number
    alertmanager      = number
    journal_remote    = number
    pgbackrest        = number
    etcd_client       = number
    etcd_peer         = number
    patroni           = number
  })

  validation {
    condition     = alltrue([for port in values(var.service_ports) : port >= 1 && port <= 65535 && floor(port) == port])
    error_message = "Every service port must be a whole number from 1 to 65535."
  }
}

variable "tags" {
  description = "Tags added to every security group."
  type        = map(string)
  default     = {}
}
