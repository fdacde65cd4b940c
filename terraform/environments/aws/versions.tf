terraform {
  required_version = ">= 1.0.3"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 3.39, < 7.0"
    }
  }
}

# No default_tags: on AWS provider 3.x they reach aws_eip too, which refuses
# tags unless `vpc = true` - an argument 6.x no longer has. Modules tag their
# own resources with local.tags instead.
provider "aws" {
  region = var.region
}
