# pgBackRest's repository in S3: the monitor (the repository host) writes
# backups and archived WAL there, and the instances given the instance profile
# read and write its objects and nothing else of the account's S3.
#
# The bucket is private (public access block, a policy refusing plain HTTP),
# encrypted by default with SSE-KMS under the account's aws/s3 key (S3 uses it
# for any principal of the account that may use the bucket, so the role needs
# no KMS grant, and backups kept after the stack is gone stay readable - the
# stack's own data key is deleted with it), and versioned: an object pgBackRest
# overwrites or a mistaken delete can be recovered for noncurrent_days, after
# which the old versions go (pgBackRest's own retention decides which backups
# are current). force_destroy stays off: destroying the stack stops at a bucket
# holding backups (README.md, teardown).
#
# No aws_s3_bucket_ownership_controls: AWS provider 3.39 (the mirror's) knows
# only BucketOwnerPreferred and ObjectWriter, and either would switch ACLs back
# on; S3 creates every new bucket with ACLs disabled (BucketOwnerEnforced), and
# that default is kept.
resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_18:pgBackRest writes and reads only through the instance role; S3 server access logs belong to the account's logging baseline (a log bucket outside this stack)
  # checkov:skip=CKV_AWS_144:cross-region replication of the backups is a second region's bucket and cost this stack does not own
  # checkov:skip=CKV2_AWS_62:nothing consumes the backup bucket's events: pgBackRest keeps its own record of what the repository holds
  bucket        = var.bucket_name
  force_destroy = false

  versioning {
    enabled = true
  }

  server_side_encryption_configuration {
    rule {
      apply_server_side_encryption_by_default {
        sse_algorithm = "aws:kms"
      }
      bucket_key_enabled = true
    }
  }

  lifecycle_rule {
    id                                     = "multipart-and-old-versions"
    enabled                                = true
    abort_incomplete_multipart_upload_days = 7

    noncurrent_version_expiration {
      days = var.noncurrent_days
    }

    # A delete marker left with no older version behind it.
    expiration {
      expired_object_delete_marker = true
    }
  }

  tags = merge(var.tags, { Name = var.bucket_name })
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "RefusePlainHttp"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })

  # S3 refuses a policy change while the public access block is being set.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# The instances' role: list the bucket, read, write and delete its objects.
resource "aws_iam_role" "this" {
  name = var.role_name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  tags = var.tags
}

resource "aws_iam_role_policy" "this" {
  name = "pgbackrest-repository"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListTheRepository"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = aws_s3_bucket.this.arn
      },
      {
        Sid      = "UseTheRepositorysObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = "${aws_s3_bucket.this.arn}/*"
      },
    ]
  })
}

resource "aws_iam_instance_profile" "this" {
  name = var.role_name
  role = aws_iam_role.this.name

  tags = var.tags
}
