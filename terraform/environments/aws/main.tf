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

  name        = var.name
  vpc_id      = module.network.vpc_id
  admin_cidrs = var.admin_cidrs
  app_port    = var.app_port
  tags        = local.tags
}

resource "aws_key_pair" "admin" {
  key_name   = "${var.name}-admin"
  public_key = trimspace(var.ssh_public_key)
  tags       = local.tags
}

module "lb" {
  source = "../../modules/aws-instances"

  name                = "${var.name}-lb"
  ami_id              = local.ami_id
  instance_type       = var.instance_types.lb
  subnet_ids          = module.network.public_subnet_ids
  security_group_ids  = [module.security.security_group_ids["lb"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
  public              = true
}

module "app" {
  source = "../../modules/aws-instances"

  name                = "${var.name}-app"
  instance_count      = var.app_count
  ami_id              = local.ami_id
  instance_type       = var.instance_types.app
  subnet_ids          = module.network.private_subnet_ids
  security_group_ids  = [module.security.security_group_ids["app"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

module "redis" {
  source = "../../modules/aws-instances"

  name                = "${var.name}-redis"
  ami_id              = local.ami_id
  instance_type       = var.instance_types.redis
  subnet_ids          = module.network.private_subnet_ids
  security_group_ids  = [module.security.security_group_ids["redis"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
}

module "pg_primary" {
  source = "../../modules/aws-instances"

  name                = "${var.name}-pg-primary"
  ami_id              = local.ami_id
  instance_type       = var.instance_types.postgres
  subnet_ids          = [module.network.private_subnet_ids[0]]
  security_group_ids  = [module.security.security_group_ids["postgres_primary"]]
  key_name            = aws_key_pair.admin.key_name
  detailed_monitoring = var.detailed_monitoring
  tags                = local.tags
  root_volume_size    = 20
}

# The replica sits in the second zone: losing a zone leaves one copy.
module "pg_replica" {
  source = "../../modules/aws-instances"

  name                = "${var.name}-pg-replica"
  ami_id              = local.ami_id
  instance_type       = var.instance_types.postgres
  subnet_ids          = [module.network.private_subnet_ids[1]]
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
    postgres_primary = [for host in module.pg_primary.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
    postgres_replica = [for host in module.pg_replica.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip }]
  }

  vars = {
    flaskfleet_environment = var.name
    flaskfleet_bastion     = module.lb.hosts[0].public_ip
    flaskfleet_lb_url      = "http://${module.lb.hosts[0].public_ip}"
    # The common role's firewall admits SSH from these (comma-separated).
    flaskfleet_admin_cidrs = join(",", var.admin_cidrs)
  }
}
