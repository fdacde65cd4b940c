variable "instances" {
  description = "The instances of one tier: instance name => its fixed IPv4 address on the network (a static DHCP lease, so addresses survive a restart)."
  type        = map(string)

  validation {
    condition     = length(var.instances) <= 50
    error_message = "A tier has at most 50 instances (it may have none, as the workers with worker_count = 0)."
  }

  validation {
    condition     = alltrue([for name in keys(var.instances) : can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", name))])
    error_message = "Instance names must be valid host names: a-z, 0-9 and '-', starting with a letter, at most 63 characters."
  }

  validation {
    condition     = alltrue([for address in values(var.instances) : can(cidrhost("${address}/32", 0))])
    error_message = "Every instance's address must be an IPv4 address."
  }
}

variable "image" {
  description = "Local LXD image alias or fingerprint the instances start from (scripts/setup-lxd.sh imports flaskfleet-base)."
  type        = string

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "The image must not be empty."
  }
}

variable "network" {
  description = "LXD network the instances' eth0 attaches to."
  type        = string

  validation {
    condition     = length(trimspace(var.network)) > 0
    error_message = "The network must not be empty."
  }
}

variable "nameserver" {
  description = "IPv4 address of the DNS server the instances use: the network's gateway, where LXD's dnsmasq listens."
  type        = string

  validation {
    condition     = can(cidrhost("${var.nameserver}/32", 0))
    error_message = "The nameserver must be an IPv4 address."
  }
}

variable "admin_authorized_keys" {
  description = "OpenSSH public keys, one line each, that may log in as the image's `admin` user (sudo without a password)."
  type        = list(string)

  validation {
    condition     = length(var.admin_authorized_keys) > 0 && alltrue([for key in var.admin_authorized_keys : can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( [^\\n]*)?$", key))])
    error_message = "Give at least one admin key, each a single OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-*)."
  }
}

variable "profile" {
  description = "The LXD profile every instance uses (modules/lxd-profile): systemd's needs and the root disk."
  type        = string

  validation {
    condition     = length(trimspace(var.profile)) > 0
    error_message = "The profile must not be empty."
  }
}

variable "limits" {
  description = "LXD resource limits per instance, e.g. { cpu = \"2\", memory = \"1GiB\" }; empty for none."
  type        = map(string)
  default     = {}
}

variable "proxy_devices" {
  description = "LXD proxy devices on every instance of the tier: a port on the host forwarded into the instance, e.g. { name = \"http\", listen = \"tcp:127.0.0.1:8080\", connect = \"tcp:127.0.0.1:80\" }."
  type = list(object({
    name    = string
    listen  = string
    connect = string
  }))
  default = []

  validation {
    condition     = alltrue([for proxy in var.proxy_devices : can(regex("^tcp:[0-9.]+:[0-9]+$", proxy.listen)) && can(regex("^tcp:[0-9.]+:[0-9]+$", proxy.connect))])
    error_message = "Proxy listen and connect addresses look like tcp:ADDRESS:PORT."
  }
}
