terraform {
  required_version = ">= 1.0.3"

  required_providers {
    lxd = {
      source  = "terraform-lxd/lxd"
      version = "~> 1.5"
    }
  }
}

# The local LXD daemon over its unix socket (scripts/setup-lxd.sh starts it).
provider "lxd" {
  generate_client_certificates = false
  accept_remote_certificate    = false
}
