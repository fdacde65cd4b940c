# The instances of one tier. IMDSv2 only, encrypted root volume, detailed
# monitoring; no public address unless the tier is public (then an Elastic IP
# that outlives a stop/start).
locals {
  names = [for index in range(var.instance_count) : var.instance_count == 1 ? var.name : "${var.name}-${index + 1}"]
}

resource "aws_instance" "this" {
  # checkov:skip=CKV2_AWS_41:the hosts call no AWS API, so they get no instance profile (least privilege)
  count = var.instance_count

  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_ids[count.index % length(var.subnet_ids)]
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

  tags        = merge(var.tags, { Name = local.names[count.index] })
  volume_tags = merge(var.tags, { Name = local.names[count.index] })
}

# Neither `vpc` nor `domain`, and no tags: see modules/aws-network.
resource "aws_eip" "this" {
  # checkov:skip=CKV2_AWS_19:each address is attached to its instance by `instance` below
  count = var.public ? var.instance_count : 0

  instance = aws_instance.this[count.index].id
}
