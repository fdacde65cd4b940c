# The one shape every environment hands to Ansible: the YAML inventory format
# (all -> children -> group -> hosts), written as JSON by `make`. Groups come
# from the stack's tiers; postgres is a parent of both PostgreSQL groups so a
# play can target the database hosts at once.
locals {
  inventory = {
    all = {
      vars = var.vars
      children = merge(
        {
          for group, hosts in var.groups : group => {
            hosts = {
              # data_volume_id only where there is one.
              for host in hosts : host.name => merge(
                { ansible_host = host.ansible_host, private_ip = host.private_ip },
                host.data_volume_id == null ? {} : { data_volume_id = host.data_volume_id },
              )
            }
          }
        },
        {
          postgres = {
            children = {
              postgres_primary = {}
              postgres_replica = {}
            }
          }
        },
      )
    }
  }
}
