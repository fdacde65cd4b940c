variable "name" {
  description = "Name prefix of every resource and its Name tag."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name))
    error_message = "The name must be 1-31 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "cidr" {
  description = "IPv4 block of the VPC (/16 to /24); each availability zone gets one public and one private subnet of a sixteenth of it."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr, 1)) && can(regex("^[0-9.]+/([0-9]+)$", var.cidr)) && try(tonumber(split("/", var.cidr)[1]) >= 16 && tonumber(split("/", var.cidr)[1]) <= 24, false)
    error_message = "The VPC CIDR must be an IPv4 block between /16 and /24, e.g. 10.20.0.0/16."
  }
}

variable "availability_zones" {
  description = "The two (or more, up to 8) availability zones the subnets spread over."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 8 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "Give 2 to 8 distinct availability zones."
  }
}

variable "tags" {
  description = "Tags added to every resource but the NAT gateway's Elastic IP (see main.tf)."
  type        = map(string)
  default     = {}
}
