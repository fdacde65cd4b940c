variable "instances" {
  description = "The instances of the tier: instance name (its Name tag and inventory host name) => the subnet it is placed in."
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
    condition     = alltrue([for subnet in values(var.instances) : can(regex("^subnet-[0-9a-f]+$", subnet))])
    error_message = "Every instance's subnet is a subnet ID, e.g. subnet-0123456789abcdef0."
  }
}

variable "ami_id" {
  description = "AMI the instances boot."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "The AMI ID looks like ami-0123456789abcdef0."
  }
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "The instance type looks like t3.small."
  }
}

variable "security_group_ids" {
  description = "Security groups of every instance."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "Give at least one security group."
  }
}

variable "key_name" {
  description = "EC2 key pair that admits the admin user."
  type        = string
}

variable "iam_instance_profile" {
  description = "Name of the IAM instance profile every instance gets; null gives none (the instances call no AWS API)."
  type        = string
  default     = null

  validation {
    condition     = var.iam_instance_profile == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,128}$", var.iam_instance_profile))
    error_message = "The instance profile is an instance profile's name: 1-128 characters of letters, digits and +=,.@_-."
  }
}

variable "public" {
  description = "Whether each instance gets an Elastic IP (it must sit in a public subnet)."
  type        = bool
  default     = false
}

variable "detailed_monitoring" {
  description = "Whether CloudWatch collects the instances' metrics every minute instead of every five."
  type        = bool
  default     = true
}

variable "root_volume_size" {
  description = "Size of the encrypted root volume in GiB."
  type        = number
  default     = 10

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 16384
    error_message = "The root volume must be 8 to 16384 GiB (the Debian AMI needs 8)."
  }
}

variable "data_volume_size" {
  description = "Size in GiB of each instance's own encrypted data volume (gp3, attached as /dev/sdf); 0 gives none."
  type        = number
  default     = 0

  validation {
    condition     = var.data_volume_size == 0 || (var.data_volume_size >= 1 && var.data_volume_size <= 16384 && floor(var.data_volume_size) == var.data_volume_size)
    error_message = "The data volume size is 0 (none) or a whole number of GiB from 1 to 16384."
  }
}

variable "data_volume_kms_key" {
  description = "ARN of the customer managed KMS key the data volumes are encrypted with; null leaves them on the account's default EBS key."
  type        = string
  default     = null

  validation {
    condition     = var.data_volume_kms_key == null || can(regex("^arn:aws[a-z-]*:kms:", var.data_volume_kms_key))
    error_message = "The data volume key is a KMS key ARN (arn:aws:kms:...)."
  }
}

variable "termination_protection" {
  description = "Whether EC2 refuses to terminate the instances (and so `tofu destroy` fails) until an apply turns it off."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to the instances and their volumes (Elastic IPs stay untagged, see main.tf)."
  type        = map(string)
  default     = {}
}
