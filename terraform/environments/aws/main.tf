# The stack on EC2: the load balancer in a public subnet with an Elastic IP
# (it is also the SSH bastion), everything else in private subnets that reach
# package mirrors through the NAT gateway. PostgreSQL and Redis run on EC2 and
# are configured by Ansible, as in the local environment. pgBackRest's
# repository is an S3 bucket of the stack's own, reached by the monitor (the
# repository host) and the databases through an instance profile.
data "aws_ami" "debian" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  # Zones a and b exist in every region; naming them (rather than asking for
  # the available ones) keeps the subnets put when AWS adds a zone.
  availability_zones = length(var.availability_zones) > 0 ? var.availability_zones : ["${var.region}a", "${var.region}b"]
  ami_id             = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id
  tags               = { Project = "flaskfleet", Environment = var.name }
  lb_url             = "https://${var.public_domain}"
  private_subnet_ids = module.network.private_subnet_ids

  # Tier (its inventory group and security group) => its instances, keyed by
  # name (name => subnet), and what differs from the defaults: the
  # instance_types key (the tier's name), an Elastic IP (public), the root
  # volume's size, the backup bucket's instance profile (backup_repository: the
  # monitor only, the repository host; the database hosts reach the repository
  # through it).
  # One module instance per entry: adding a tier is one entry
  # here. app-N and worker-N keep their name and subnet (spread over the
  # private subnets by their number) whatever happens to the others.
  tiers = {
    lb = { instances = { "${var.name}-lb" = module.network.public_subnet_ids[0] }, public = true }
    app = {
      instances = { for index in range(var.app_count) : "${var.name}-app-${index + 1}" => local.private_subnet_ids[index % length(local.private_subnet_ids)] }
    }
    redis = { instances = { "${var.name}-redis" = local.private_subnet_ids[0] } }
    # The task queue: a Redis of its own (no eviction, AOF), so queued tasks never
    # compete with the cache for memory or fall to its LRU eviction. In the second
    # zone: losing one zone takes the cache or the queue, not both.
    queue = { instances = { "${var.name}-queue" = local.private_subnet_ids[1] } }
    worker = {
      instances = { for index in range(var.worker_count) : "${var.name}-worker-${index + 1}" => local.private_subnet_ids[index % length(local.private_subnet_ids)] }
    }
    # The databases keep PGDATA on a data volume of their own and are
    # protected from termination (var.database_termination_protection).
    postgres_primary = {
      instances     = { "${var.name}-postgres-primary" = local.private_subnet_ids[0] }
      instance_type = "postgres", stateful = true
    }
    # The replica sits in the second zone: losing a zone leaves one copy.
    postgres_replica = {
      instances     = { "${var.name}-postgres-replica" = local.private_subnet_ids[1] }
      instance_type = "postgres", stateful = true
    }
    # Prometheus' TSDB and every host's journal (systemd-journal-remote) need
    # the room; both have retention limits below 20 GiB. The monitor is also
    # pgBackRest's repository host, the repository itself the S3 bucket.
    monitor = { instances = { "${var.name}-monitor" = local.private_subnet_ids[0] }, root_volume_size = 20, backup_repository = true }
    # The scratch VM of the point-in-time restore drill (restore_count 0 or 1):
    # a database's instance type, for the database's PostgreSQL settings, and
    # room on its root volume for a whole copy of PGDATA (no data volume: it
    # keeps nothing). Beside the monitor, whose repository it restores from.
    restore = {
      instances        = { for index in range(var.restore_count) : "${var.name}-restore" => local.private_subnet_ids[0] }
      instance_type    = "postgres"
      root_volume_size = min(10 + var.database_volume_size, 16384)
    }
  }
}

module "network" {
  source = "../../modules/aws-network"

  name               = var.name
  cidr               = var.vpc_cidr
  availability_zones = local.availability_zones
  tags               = local.tags
}

module "security" {
  source = "../../modules/aws-security"

  name          = var.name
  vpc_id        = module.network.vpc_id
  admin_cidrs   = var.admin_cidrs
  service_ports = var.service_ports
  tags          = local.tags
}

resource "aws_key_pair" "admin" {
  key_name   = "${var.name}-admin"
  public_key = trimspace(var.ssh_public_key)
  tags       = local.tags
}

# The databases' data volumes are encrypted with a key of this stack's own
# (rotated yearly), not the account's default aws/ebs key: its policy, not every
# IAM user with EC2 rights, decides who can read a copy of the data, and
# deleting the stack leaves the key 30 days in which its snapshots can still be
# read. The policy is the default one: the account administers and uses it
# through IAM.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

resource "aws_kms_key" "data" {
  description             = "${var.name}: the databases' data volumes"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersThroughIam"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
  tags = local.tags
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

# pgBackRest's repository: a private, encrypted, versioned bucket named after
# the stack, the account and the region (S3 names are global), and the
# instance profile that lets the monitor and the databases use its objects.
module "backup_repository" {
  source = "../../modules/aws-backup-repository"

  bucket_name = "${var.name}-pgbackrest-${data.aws_caller_identity.current.account_id}-${var.region}"
  role_name   = "${var.name}-pgbackrest"
  tags        = local.tags
}

module "tier" {
  source   = "../../modules/aws-instances"
  for_each = local.tiers

  instances              = each.value.instances
  ami_id                 = local.ami_id
  instance_type          = var.instance_types[try(each.value.instance_type, each.key)]
  security_group_ids     = [module.security.security_group_ids[each.key]]
  key_name               = aws_key_pair.admin.key_name
  detailed_monitoring    = var.detailed_monitoring
  tags                   = local.tags
  public                 = try(each.value.public, false)
  root_volume_size       = try(each.value.root_volume_size, 10)
  data_volume_size       = try(each.value.stateful, false) ? var.database_volume_size : 0
  data_volume_kms_key    = aws_kms_key.data.arn
  termination_protection = try(each.value.stateful, false) && var.database_termination_protection
  iam_instance_profile   = try(each.value.backup_repository, false) ? module.backup_repository.instance_profile : null
}

# Ansible connects over SSH as Debian's cloud user `admin`: straight to the
# load balancer's Elastic IP, and through it (ProxyJump, see
# group_vars/all/connection.yml) to the private hosts' private addresses.
module "inventory" {
  source = "../../modules/inventory"

  # A public tier's hosts at their Elastic IP, every other at its private address.
  groups = {
    for tier, instances in module.tier : tier => [
      for host in instances.hosts : {
        name           = host.name
        ansible_host   = coalesce(host.public_ip, host.private_ip)
        private_ip     = host.private_ip
        data_volume_id = host.data_volume_id
      }
    ]
  }

  vars = {
    flaskfleet_environment = var.name
    flaskfleet_bastion     = module.tier["lb"].hosts[0].public_ip
    flaskfleet_lb_url      = local.lb_url
    # The nginx role serves TLS for this name with a certificate from ACME
    # (HTTP-01 on port 80), registered with this address.
    flaskfleet_public_domain = var.public_domain
    flaskfleet_acme_email    = var.acme_email
    # The common role's firewall admits SSH from these (comma-separated).
    flaskfleet_admin_cidrs = join(",", var.admin_cidrs)
    # The bucket of pgBackRest's repository, for its repository host (the
    # monitor); the local stack has none and keeps the repository on the
    # monitor's disk.
    pgbackrest_s3_bucket = module.backup_repository.bucket
    pgbackrest_s3_region = var.region
  }
}
