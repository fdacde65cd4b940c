variable "name" {
  description = "Name of the profile; the stack's instances use it instead of the host's default profile."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.name))
    error_message = "The profile name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter."
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
