variable "name" {
  description = "Environment name: prefixes every resource's name and tags them, so two stacks can share an account."
  type        = string
  default     = "flaskfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name))
    error_message = "The environment name must be 2-20 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'."
  }
}

variable "region" {
  description = "AWS region of the stack."
  type        = string
  default     = "eu-central-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "The region looks like eu-central-1."
  }
}

variable "availability_zones" {
  description = "The availability zones the subnets spread over; empty means the region's zones a and b."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || (length(var.availability_zones) >= 2 && length(distinct(var.availability_zones)) == length(var.availability_zones))
    error_message = "Give no availability zone (the region's zones a and b are taken) or at least two distinct ones."
  }
}

variable "vpc_cidr" {
  description = "IPv4 block of the VPC (/16 to /24)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 1)) && can(regex("^[0-9.]+/([0-9]+)$", var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24, false)
    error_message = "The VPC CIDR must be an IPv4 block between /16 and /24, e.g. 10.20.0.0/16."
  }
}

variable "admin_cidrs" {
  description = "Address blocks allowed to SSH to the load balancer (the bastion), e.g. [\"203.0.113.0/24\"]."
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

variable "ssh_public_key" {
  description = "OpenSSH public key admitted for the admin user on every host."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", trimspace(var.ssh_public_key)))
    error_message = "The SSH public key must be one line in OpenSSH format, e.g. ssh-ed25519 AAAA... admin@example."
  }
}

variable "ami_id" {
  description = "AMI for every host; null looks up the newest official Debian 12 amd64 AMI."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "The AMI ID looks like ami-0123456789abcdef0."
  }
}

variable "app_count" {
  description = "Number of application servers (spread over the availability zones)."
  type        = number
  default     = 2

  validation {
    condition     = var.app_count >= 1 && var.app_count <= 50 && floor(var.app_count) == var.app_count
    error_message = "The app count must be a whole number from 1 to 50."
  }
}

variable "worker_count" {
  description = "Number of background (Celery) workers, spread over the availability zones; 0 runs none (tasks wait in the queue)."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_count >= 0 && var.worker_count <= 50 && floor(var.worker_count) == var.worker_count
    error_message = "The worker count must be a whole number from 0 to 50."
  }
}

variable "restore_count" {
  description = "Whether the scratch VM of the point-in-time restore drill (<name>-restore, inventory group restore, in the first private subnet) exists: 1 or 0."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 1], var.restore_count)
    error_message = "The restore count must be 0 (no restore drill VM) or 1."
  }
}

variable "service_ports" {
  description = "Ports the services listen on inside the VPC, for the security groups: app (the application servers, behind the load balancer; also their /metrics), redis (the cache, and the task queue, which runs the same role), postgresql, worker_metrics (each worker's metrics), the exporters (node_exporter on every VM; postgres, redis, nginx beside their services), prometheus and alertmanager (on the monitor, reached through the bastion), journal_remote (the monitor's systemd-journal-remote, every VM's log upload), pgbackrest (pgBackRest's TLS server on the monitor, the backup repository host, and on each database), etcd_client and etcd_peer (etcd, where Patroni keeps its leader lock: a member on each database and on the monitor), patroni (Patroni's REST API on each database). The roles own them and the playbook sets them in group_vars/all/ports.yml; keep the two equal (tests/terraform checks this default against it)."
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
  default = {
    app               = 8000
    redis             = 6379
    postgresql        = 5432
    worker_metrics    = 9808
    node_exporter     = 9100
    postgres_exporter = 9187
    redis_exporter    = 9121
    nginx_exporter    = 9113
    prometheus        = 9090
    alertmanager      = 9093
    journal_remote    = 19532
    pgbackrest        = 8432
    etcd_client       = 2379
    etcd_peer         = 2380
    patroni           = 8008
  }

  validation {
    condition     = alltrue([for port in values(var.service_ports) : port >= 1 && port <= 65535 && floor(port) == port])
    error_message = "Every service port must be a whole number from 1 to 65535."
  }
}

variable "public_domain" {
  description = "The name the stack is served under over HTTPS, e.g. shop.example.com: its DNS A record points at the load balancer (output lb_public_ip), and the nginx role gets its certificate from ACME (HTTP-01) for it."
  type        = string

  validation {
    condition     = length(var.public_domain) <= 253 && can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.public_domain))
    error_message = "The public domain must be a lower-case DNS name of at least two labels, e.g. shop.example.com."
  }
}

variable "acme_email" {
  description = "Contact address of the ACME account the load balancer's certificate is issued to (expiry and revocation notices), e.g. ops@example.com."
  type        = string

  validation {
    condition     = length(var.acme_email) <= 254 && can(regex("^[A-Za-z0-9._%+-]+@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]{2,}$", var.acme_email))
    error_message = "The ACME email must be an email address, e.g. ops@example.com."
  }
}

variable "detailed_monitoring" {
  description = "Whether CloudWatch collects every host's metrics every minute (billed) instead of every five; API emulators without MonitorInstances need false."
  type        = bool
  default     = true
}

variable "database_volume_size" {
  description = "Size in GiB of each database instance's data volume (encrypted gp3, PGDATA), which is kept apart from the instance's root volume."
  type        = number
  default     = 20

  validation {
    condition     = var.database_volume_size >= 1 && var.database_volume_size <= 16384 && floor(var.database_volume_size) == var.database_volume_size
    error_message = "The database volume size must be a whole number of GiB from 1 to 16384."
  }
}

variable "database_termination_protection" {
  description = "Whether EC2 refuses to terminate the database instances. Decommissioning the stack is two steps: an apply with this false, then destroy."
  type        = bool
  default     = true
}

variable "instance_types" {
  description = "EC2 instance type per tier: lb, app, worker, redis, queue, postgres (both databases and the restore drill VM), monitor."
  type = object({
    lb       = string
    app      = string
    worker   = string
    redis    = string
    queue    = string
    postgres = string
    monitor  = string
  })
  default = {
    lb       = "t3.micro"
    app      = "t3.small"
    worker   = "t3.small"
    redis    = "t3.small"
    queue    = "t3.small"
    postgres = "t3.medium"
    monitor  = "t3.small"
  }

  validation {
    condition     = alltrue([for type in values(var.instance_types) : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", type))])
    error_message = "Instance types look like t3.small."
  }
}
