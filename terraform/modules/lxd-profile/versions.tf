terraform {
  required_version = ">= 1.0.3"

  required_providers {
    lxd = {
      source  = "terraform-lxd/lxd"
      version = "~> 1.5"
    }
  }
}
