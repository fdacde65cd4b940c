# The stack on EC2: the load balancer in a public subnet with an Elastic IP
# (it is also the SSH bastion), everything else in private subnets that reach
# package mirrors through the NAT gateway. PostgreSQL and Redis run on EC2 and
# are configured by Ansible, as in the local environment.
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

  # Instances are keyed by name: app-N keeps its name and subnet (spread over
  # the private subnets by its number) whatever happens to the others.
  private_subnet_ids = module.network.private_subnet_ids
  app_instances = {
    for index in range(var.app_count) : "${var.name}-app-${index + 1}" => local.private_subnet_ids[index % length(local.private_subnet_ids)]
  }
  worker_instances = {
    for index in range(var.worker_count) : "${var.name}-worker-${index + 1}" => local.private_subnet_ids[index % length(local.private_subnet_ids)]
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

module "lb" {
  source = "../../modules/aws-instances"

  instances           = { "${var.name}-lb" = module.network.public_subnet_ids[0] }
  ami_id              = local.ami_id
  instance_type       = var.instance_types.lb
  security_group_ids  = [module.security.security_group_ids["lb"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
  public              = true
}

module "app" {
  source = "../../modules/aws-instances"

  instances           = local.app_instances
  ami_id              = local.ami_id
  instance_type       = var.instance_types.app
  security_group_ids  = [module.security.security_group_ids["app"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

module "redis" {
  source = "../../modules/aws-instances"

  instances           = { "${var.name}-redis" = local.private_subnet_ids[0] }
  ami_id              = local.ami_id
  instance_type       = var.instance_types.redis
  security_group_ids  = [module.security.security_group_ids["redis"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

# The task queue: a Redis of its own (no eviction, AOF), so queued tasks never
# compete with the cache for memory or fall to its LRU eviction. In the second
# zone: losing one zone takes the cache or the queue, not both.
module "queue" {
  source = "../../modules/aws-instances"

  instances           = { "${var.name}-queue" = local.private_subnet_ids[1] }
  ami_id              = local.ami_id
  instance_type       = var.instance_types.queue
  security_group_ids  = [module.security.security_group_ids["queue"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

module "worker" {
  source = "../../modules/aws-instances"

  instances           = local.worker_instances
  ami_id              = local.ami_id
  instance_type       = var.instance_types.worker
  security_group_ids  = [module.security.security_group_ids["worker"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

module "postgres_primary" {
  source = "../../modules/aws-instances"

  instances           = { "${var.name}-postgres-primary" = local.private_subnet_ids[0] }
  ami_id              = local.ami_id
  instance_type       = var.instance_types.postgres
  security_group_ids  = [module.security.security_group_ids["postgres_primary"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
  root_volume_size    = 20
}

# The replica sits in the second zone: losing a zone leaves one copy.
module "postgres_replica" {
  source = "../../modules/aws-instances"

  instances           = { "${var.name}-postgres-replica" = local.private_subnet_ids[1] }
  ami_id              = local.ami_id
  instance_type       = var.instance_types.postgres
  security_group_ids  = [module.security.security_group_ids["postgres_replica"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
  root_volume_size    = 20
}

# Ansible connects over SSH as Debian's cloud user `admin`: straight to the
# load balancer's Elastic IP, and through it (ProxyJump, see
# group_vars/all/connection.yml) to the private hosts' private addresses.
module "inventory" {
  source = "../../modules/inventory"

  groups = {
    lb               = [for host in module.lb.hosts : { name = host.name, ansible_host = host.public_ip, private_ip = host.private_ip }]
    app              = [for host in module.app.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    redis            = [for host in module.redis.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    queue            = [for host in module.queue.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    worker           = [for host in module.worker.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    postgres_primary = [for host in module.postgres_primary.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    postgres_replica = [for host in module.postgres_replica.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
  }

  vars = {
    flaskfleet_environment = var.name
    flaskfleet_bastion     = module.lb.hosts[0].public_ip
    flaskfleet_lb_url      = local.lb_url
    # The nginx role serves TLS for this name with a certificate from ACME
    # (HTTP-01 on port 80), registered with this address.
    flaskfleet_public_domain = var.public_domain
    flaskfleet_acme_email    = var.acme_email
    # The common role's firewall admits SSH from these (comma-separated).
    flaskfleet_admin_cidrs = join(",", var.admin_cidrs)
  }
}
