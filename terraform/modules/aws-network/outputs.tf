output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 block of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets, one per availability zone, in zone order."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets, one per availability zone, in zone order."
  value       = aws_subnet.private[*].id
}

output "nat_public_ip" {
  description = "The address private hosts reach the internet from."
  value       = aws_eip.nat.public_ip
}
