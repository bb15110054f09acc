"""The real backends and their provisioning: S3/SQS/SNS through boto3, Dramatiq brokers, Redis state."""
