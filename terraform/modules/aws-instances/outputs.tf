output "hosts" {
  description = "The tier's instances in order: name, private address, and public address (the Elastic IP, or null)."
  value = [
    for index, instance in aws_instance.this : {
      name       = local.names[index]
      private_ip = instance.private_ip
      public_ip  = var.public ? aws_eip.this[index].public_ip : null
    }
  ]
}

output "instance_ids" {
  description = "IDs of the tier's instances."
  value       = aws_instance.this[*].id
}
