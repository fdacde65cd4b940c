# One security group per tier, and only the flows the design needs:
#   internet -> lb 443 (HTTPS) and 80 (the HTTP->HTTPS redirect and ACME
#   HTTP-01), admin -> lb 22 (the lb is the bastion), lb -> app, app -> redis,
#   app -> postgres (primary and replica), streaming replication both ways
#   between the databases (after a failover the old replica leads), app and
#   worker -> queue (producers and consumers), worker -> postgres (primary and
#   replica), lb -> every private host 22; monitor -> every host's exporters
#   and metrics ports (it scrapes them), every host -> monitor's
#   journal_remote (log upload), lb -> monitor's prometheus and alertmanager
#   (admins tunnel to them through the bastion); pgBackRest's TLS server both
#   ways between the databases and the monitor (the backup repository host):
#   databases -> monitor (WAL archive-push and archive-get), monitor ->
#   databases (backups), and restore -> monitor (the restore drill reads the
#   repository). Failover (Patroni, its leader lock in an etcd cluster of three
#   members: one on each database and one on the monitor, the third vote): the
#   databases -> every other member's etcd client port (Patroni talks to any
#   member), every member <-> every other on etcd's peer port, the databases
#   <-> each other on Patroni's REST port (they compare WAL positions before
#   one takes the lead).
#   A host reaches its own etcd member over its own address, which no security
#   group filters, so no rule runs from a tier to itself. Nothing else reaches
#   a worker or the restore VM.
# The service ports come in as var.service_ports: the roles own them and the
# playbook sets them in group_vars/all/ports.yml (tests/terraform checks that
# the aws environment's default agrees), so this module writes none of them.
# Every host may leave on 80/443 for package mirrors (through the NAT gateway
# from the private subnets); the lb also reaches the ACME CA's API on 443. The
# VPC resolver and time service are reachable without a rule.
locals {
  tiers = toset(["lb", "app", "worker", "redis", "queue", "postgres_primary", "postgres_replica", "monitor", "restore"])
  # Patroni runs on the databases; etcd on them and on the monitor.
  databases    = ["postgres_primary", "postgres_replica"]
  etcd_members = concat(local.databases, ["monitor"])

  flows = concat(
    [
      { from = "lb", to = "app", port = var.service_ports.app, what = "HTTP to the application servers" },
      { from = "app", to = "redis", port = var.service_ports.redis, what = "Redis" },
      { from = "app", to = "postgres_primary", port = var.service_ports.postgresql, what = "PostgreSQL writes" },
      { from = "app", to = "postgres_replica", port = var.service_ports.postgresql, what = "PostgreSQL reads" },
      { from = "postgres_replica", to = "postgres_primary", port = var.service_ports.postgresql, what = "PostgreSQL streaming replication" },
      { from = "postgres_primary", to = "postgres_replica", port = var.service_ports.postgresql, what = "PostgreSQL streaming replication after a failover" },
      { from = "postgres_replica", to = "postgres_primary", port = var.service_ports.patroni, what = "Patroni REST API (failover checks)" },
      { from = "postgres_primary", to = "postgres_replica", port = var.service_ports.patroni, what = "Patroni REST API (failover checks)" },
      { from = "app", to = "queue", port = var.service_ports.redis, what = "Task queue (producer)" },
      { from = "worker", to = "queue", port = var.service_ports.redis, what = "Task queue (consumer)" },
      { from = "worker", to = "postgres_primary", port = var.service_ports.postgresql, what = "PostgreSQL writes" },
      { from = "worker", to = "postgres_replica", port = var.service_ports.postgresql, what = "PostgreSQL reads" },
      { from = "monitor", to = "app", port = var.service_ports.app, what = "App metrics scrape" },
      { from = "monitor", to = "worker", port = var.service_ports.worker_metrics, what = "Worker metrics scrape" },
      { from = "monitor", to = "postgres_primary", port = var.service_ports.postgres_exporter, what = "PostgreSQL exporter scrape" },
      { from = "monitor", to = "postgres_replica", port = var.service_ports.postgres_exporter, what = "PostgreSQL exporter scrape" },
      { from = "monitor", to = "redis", port = var.service_ports.redis_exporter, what = "Redis exporter scrape" },
      { from = "monitor", to = "queue", port = var.service_ports.redis_exporter, what = "Redis exporter scrape" },
      { from = "monitor", to = "lb", port = var.service_ports.nginx_exporter, what = "nginx exporter scrape" },
      { from = "lb", to = "monitor", port = var.service_ports.prometheus, what = "Prometheus through the bastion" },
      { from = "lb", to = "monitor", port = var.service_ports.alertmanager, what = "Alertmanager through the bastion" },
      { from = "postgres_primary", to = "monitor", port = var.service_ports.pgbackrest, what = "pgBackRest WAL archive" },
      { from = "postgres_replica", to = "monitor", port = var.service_ports.pgbackrest, what = "pgBackRest WAL archive" },
      { from = "monitor", to = "postgres_primary", port = var.service_ports.pgbackrest, what = "pgBackRest backup" },
      { from = "monitor", to = "postgres_replica", port = var.service_ports.pgbackrest, what = "pgBackRest backup" },
      { from = "restore", to = "monitor", port = var.service_ports.pgbackrest, what = "pgBackRest restore drill" },
    ],
    [for tier in sort(tolist(local.tiers)) : { from = "lb", to = tier, port = 22, what = "SSH through the bastion" } if tier != "lb"],
    [for tier in sort(tolist(local.tiers)) : { from = "monitor", to = tier, port = var.service_ports.node_exporter, what = "Node exporter scrape" } if tier != "monitor"],
    [for tier in sort(tolist(local.tiers)) : { from = tier, to = "monitor", port = var.service_ports.journal_remote, what = "Journal upload" } if tier != "monitor"],
    [for pair in setproduct(local.databases, local.etcd_members) : { from = pair[0], to = pair[1], port = var.service_ports.etcd_client, what = "etcd client (Patroni)" } if pair[0] != pair[1]],
    [for pair in setproduct(local.etcd_members, local.etcd_members) : { from = pair[0], to = pair[1], port = var.service_ports.etcd_peer, what = "etcd peers" } if pair[0] != pair[1]],
  )
  flow_map = { for flow in local.flows : "${flow.from}-to-${flow.to}-${flow.port}" => flow }

  egress_ports = { http = 80, https = 443 }
  egress_rules = { for pair in setproduct(sort(tolist(local.tiers)), keys(local.egress_ports)) : "${pair[0]}-${pair[1]}" => { tier = pair[0], port = local.egress_ports[pair[1]] } }
}

resource "aws_security_group" "tier" {
  # checkov:skip=CKV2_AWS_5:the groups are attached to the instances by the environment (modules/aws-instances), which checkov's graph does not follow through module outputs
  for_each = local.tiers

  name        = "${var.name}-${replace(each.key, "_", "-")}"
  description = "flaskfleet ${var.name} ${each.key} tier"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-${replace(each.key, "_", "-")}", Tier = each.key })
}

resource "aws_security_group_rule" "flow_in" {
  for_each = local.flow_map

  type                     = "ingress"
  description              = "${each.value.what} from ${each.value.from}"
  security_group_id        = aws_security_group.tier[each.value.to].id
  source_security_group_id = aws_security_group.tier[each.value.from].id
  protocol                 = "tcp"
  from_port                = each.value.port
  to_port                  = each.value.port
}

resource "aws_security_group_rule" "flow_out" {
  for_each = local.flow_map

  type                     = "egress"
  description              = "${each.value.what} to ${each.value.to}"
  security_group_id        = aws_security_group.tier[each.value.from].id
  source_security_group_id = aws_security_group.tier[each.value.to].id
  protocol                 = "tcp"
  from_port                = each.value.port
  to_port                  = each.value.port
}

resource "aws_security_group_rule" "https_in" {
  type              = "ingress"
  description       = "HTTPS from the internet to the load balancer"
  security_group_id = aws_security_group.tier["lb"].id
  cidr_blocks       = var.public_ingress_cidrs
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_security_group_rule" "http_in" {
  # checkov:skip=CKV_AWS_260:port 80 is open to the internet only for the HTTP->HTTPS redirect and ACME HTTP-01
  type = "ingress"
  # AWS refuses '>' in a rule description, hence "to".
  description       = "HTTP from the internet to the load balancer, only for the HTTP to HTTPS redirect and ACME HTTP-01"
  security_group_id = aws_security_group.tier["lb"].id
  cidr_blocks       = var.public_ingress_cidrs
  protocol          = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_security_group_rule" "admin_ssh_in" {
  # checkov:skip=CKV_AWS_24:admin_cidrs has no default and its validation rejects any /0 block
  type              = "ingress"
  description       = "SSH from the admin network to the bastion"
  security_group_id = aws_security_group.tier["lb"].id
  cidr_blocks       = var.admin_cidrs
  protocol          = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_security_group_rule" "packages_out" {
  for_each = local.egress_rules

  type              = "egress"
  description       = "Package mirrors over port ${each.value.port}"
  security_group_id = aws_security_group.tier[each.value.tier].id
  cidr_blocks       = ["0.0.0.0/0"]
  protocol          = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
}
