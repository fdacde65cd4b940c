output "bucket" {
  description = "Name of the repository's S3 bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the repository's S3 bucket."
  value       = aws_s3_bucket.this.arn
}

output "instance_profile" {
  description = "Name of the instance profile whose role may use the bucket's objects."
  value       = aws_iam_instance_profile.this.name
}
