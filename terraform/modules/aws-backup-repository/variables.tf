variable "bucket_name" {
  description = "Name of the repository's S3 bucket, unique across S3 (e.g. <stack>-pgbackrest-<account id>-<region>)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("--", var.bucket_name))
    error_message = "The bucket name must be 3-63 characters of a-z, 0-9 and single '-', starting and ending with a letter or digit."
  }
}

variable "role_name" {
  description = "Name of the IAM role and of the instance profile that carries it."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.role_name))
    error_message = "The role name must be 1-64 characters of letters, digits and +=,.@_-."
  }
}

variable "noncurrent_days" {
  description = "Days an overwritten or deleted object's old version is kept before S3 expires it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_days >= 1 && floor(var.noncurrent_days) == var.noncurrent_days
    error_message = "The days old versions are kept must be a whole number of at least 1."
  }
}

variable "tags" {
  description = "Tags added to the bucket, the role and the instance profile."
  type        = map(string)
  default     = {}
}
