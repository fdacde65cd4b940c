# The stack as LXD system containers on a bridge of its own: one module
# instance per tier of local.tiers, so adding a tier is one entry there (its
# containers and its inventory group follow).
locals {
  lb_address      = cidrhost(var.network_cidr, 10)
  monitor_address = cidrhost(var.network_cidr, 40)

  # Tier (its inventory group) => its instances (name => address) and, for the
  # lb, its proxy device. Addresses are fixed per tier (static DHCP leases), so
  # the inventory is stable across restarts: lb .10, redis .20, queue .21,
  # postgres-primary .30, postgres-replica .31, monitor .40, restore .45,
  # app .101-.150, worker .151-.200 (each range holds its count's maximum, 50).
  tiers = {
    # The load balancer's port 80 on its private address (where nginx listens,
    # like every service) is published on the host's 127.0.0.1 only.
    lb = {
      instances = { "${var.name}-lb" = local.lb_address }
      proxy_devices = [{
        name    = "http"
        listen  = "tcp:127.0.0.1:${var.lb_http_port}"
        connect = "tcp:${local.lb_address}:80"
      }]
    }
    app = {
      instances = { for index in range(var.app_count) : "${var.name}-app-${index + 1}" => cidrhost(var.network_cidr, 101 + index) }
    }
    redis = { instances = { "${var.name}-redis" = cidrhost(var.network_cidr, 20) } }
    # The task queue: a Redis of its own (no eviction, AOF), so queued tasks never
    # compete with the cache for memory or fall to its LRU eviction.
    queue = { instances = { "${var.name}-queue" = cidrhost(var.network_cidr, 21) } }
    worker = {
      instances = { for index in range(var.worker_count) : "${var.name}-worker-${index + 1}" => cidrhost(var.network_cidr, 151 + index) }
    }
    postgres_primary = { instances = { "${var.name}-postgres-primary" = cidrhost(var.network_cidr, 30) } }
    postgres_replica = { instances = { "${var.name}-postgres-replica" = cidrhost(var.network_cidr, 31) } }
    # Prometheus and Alertmanager, published on the host's 127.0.0.1 like the
    # lb's port 80 (the host is the admin network they admit).
    monitor = {
      instances = { "${var.name}-monitor" = local.monitor_address }
      proxy_devices = [
        { name = "prometheus", listen = "tcp:127.0.0.1:${var.prometheus_host_port}", connect = "tcp:${local.monitor_address}:9090" },
        { name = "alertmanager", listen = "tcp:127.0.0.1:${var.alertmanager_host_port}", connect = "tcp:${local.monitor_address}:9093" },
      ]
    }
    # The scratch VM of the point-in-time restore drill (restore_count 0 or 1):
    # it restores from the backup repository on the monitor.
    restore = {
      instances = { for index in range(var.restore_count) : "${var.name}-restore" => cidrhost(var.network_cidr, 45) }
    }
  }
}

module "network" {
  source = "../../modules/lxd-network"

  name = "${var.name}-br"
  cidr = var.network_cidr
}

module "profile" {
  source = "../../modules/lxd-profile"

  name         = "${var.name}-vm"
  storage_pool = var.storage_pool
}

module "tier" {
  source   = "../../modules/lxd-instances"
  for_each = local.tiers

  instances             = each.value.instances
  proxy_devices         = try(each.value.proxy_devices, [])
  image                 = var.image
  network               = module.network.name
  nameserver            = module.network.gateway
  profile               = module.profile.name
  admin_authorized_keys = [trimspace(var.admin_ssh_public_key)]
}

# Ansible connects over SSH as `admin` to the private address, straight from
# the host (the bridge's gateway, which the firewall admits as the admin
# network); see inventories/local/group_vars/all/connection.yml.
module "inventory" {
  source = "../../modules/inventory"

  groups = {
    for tier, instances in module.tier : tier => [
      for host in instances.hosts : { name = host.name, ansible_host = host.private_ip, private_ip = host.private_ip, data_volume_id = null }
    ]
  }

  vars = {
    flaskfleet_environment = var.name
    flaskfleet_lb_url      = "http://127.0.0.1:${var.lb_http_port}"
    flaskfleet_admin_cidrs = "${module.network.gateway}/32"
  }
}
