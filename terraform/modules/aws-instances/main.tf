# The instances of one tier, keyed by name (like modules/lxd-instances): the
# environment decides each one's name and subnet, so removing an instance
# never renames or moves the others. IMDSv2 only, encrypted root volume,
# detailed monitoring; no public address unless the tier is public (then an
# Elastic IP that outlives a stop/start).
resource "aws_instance" "this" {
  # checkov:skip=CKV2_AWS_41:the hosts call no AWS API, so they get no instance profile (least privilege)
  for_each = var.instances

  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = each.value
  vpc_security_group_ids = var.security_group_ids
  key_name               = var.key_name
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size
    encrypted   = true
  }

  tags        = merge(var.tags, { Name = each.key })
  volume_tags = merge(var.tags, { Name = each.key })
}

# Neither `vpc` nor `domain`, and no tags: see modules/aws-network.
resource "aws_eip" "this" {
  # checkov:skip=CKV2_AWS_19:each address is attached to its instance by `instance` below
  for_each = var.public ? var.instances : {}

  instance = aws_instance.this[each.key].id
}
