# The instances of one tier, keyed by name (like modules/lxd-instances): the
# environment decides each one's name and subnet, so removing an instance
# never renames or moves the others. IMDSv2 only, encrypted root volume,
# detailed monitoring, an instance profile only where the tier is given one
# (the backup bucket's); no public address unless the tier is public (then an
# Elastic IP that outlives a stop/start). A stateful tier gets a data volume of
# its own per instance (encrypted with the given key, kept apart from the root volume, so the data
# is not tied to the instance's image) and termination protection.
# The AMI is read at creation only (ignore_changes): a newer Debian image in
# the environment's lookup must never plan the replacement of a running host,
# least of all both databases at once. New instances boot the newest image;
# moving a running one to it is an explicit `tofu apply -replace=ADDRESS`, one
# host at a time.
resource "aws_instance" "this" {
  for_each = var.instances

  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = each.value
  vpc_security_group_ids = var.security_group_ids
  key_name               = var.key_name
  iam_instance_profile   = var.iam_instance_profile
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true
  # Termination (and so `tofu destroy`) is refused until an apply turns this off.
  disable_api_termination = var.termination_protection

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

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_ebs_volume" "data" {
  for_each = var.data_volume_size > 0 ? var.instances : {}

  availability_zone = aws_instance.this[each.key].availability_zone
  type              = "gp3"
  size              = var.data_volume_size
  encrypted         = true
  kms_key_id        = var.data_volume_kms_key

  tags = merge(var.tags, { Name = "${each.key}-data", Instance = each.key })
}

# The role finds the volume by its ID (the inventory's data_volume_id): on
# Nitro instances /dev/sdf appears as an NVMe device whose serial is that ID.
resource "aws_volume_attachment" "data" {
  for_each = aws_ebs_volume.data

  device_name = "/dev/sdf"
  volume_id   = each.value.id
  instance_id = aws_instance.this[each.key].id
  # force_detach stays off: EC2 then refuses to pull the volume from under a
  # mounted, writing PostgreSQL.
  force_detach = false
}

# Neither `vpc` nor `domain`, and no tags: see modules/aws-network.
resource "aws_eip" "this" {
  # checkov:skip=CKV2_AWS_19:each address is attached to its instance by `instance` below
  for_each = var.public ? var.instances : {}

  instance = aws_instance.this[each.key].id
}
