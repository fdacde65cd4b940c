output "security_group_ids" {
  description = "Security group ID per tier: lb, app, worker, redis, queue, postgres_primary, postgres_replica, monitor, restore."
  value       = { for tier, group in aws_security_group.tier : tier => group.id }
}
