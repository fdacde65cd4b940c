variable "name" {
  description = "Name of the bridge, which is also the host's interface name (at most 15 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}$", var.name))
    error_message = "The network name must be 1-15 characters of a-z, 0-9 and '-', starting with a letter (a Linux interface name)."
  }
}

variable "cidr" {
  description = "IPv4 subnet of the bridge, e.g. 10.118.10.0/24; the host takes its first address and hands out the rest by DHCP."
  type        = string

  validation {
    condition     = can(cidrhost(var.cidr, 1)) && can(regex("^[0-9.]+/([0-9]+)$", var.cidr)) && try(tonumber(split("/", var.cidr)[1]) >= 16 && tonumber(split("/", var.cidr)[1]) <= 24, false)
    error_message = "The network CIDR must be an IPv4 subnet between /16 and /24, e.g. 10.118.10.0/24."
  }
}

variable "nat" {
  description = "Whether instances reach networks beyond the host through the host's NAT (package mirrors, for example)."
  type        = bool
  default     = true
}
