# This file is maintained automatically by "tofu init".
# Manual edits may be lost in future updates.

provider "registry.opentofu.org/terraform-lxd/lxd" {
  version     = "1.5.0"
  constraints = "~> 1.5"
  hashes = [
    "h1:AJH12D4uELiClB6i7skLQAImbOVsvRSbVIxaTMRt4Ws=",
  ]
}
