output "hosts" {
  description = "The tier's instances in name order: name, private address, public address (the Elastic IP, or null) and data volume ID (or null)."
  value = [
    for name in sort(keys(var.instances)) : {
      name           = name
      private_ip     = aws_instance.this[name].private_ip
      public_ip      = var.public ? aws_eip.this[name].public_ip : null
      data_volume_id = var.data_volume_size > 0 ? aws_ebs_volume.data[name].id : null
    }
  ]
}

output "instance_ids" {
  description = "IDs of the tier's instances in name order."
  value       = [for name in sort(keys(var.instances)) : aws_instance.this[name].id]
}
