#!/bin/sh
# One-shot MinIO set-up: buckets, a least-privilege user for radsearch, and the bucket notification
# to the API's webhook (the target itself, with its persistent queue dir, is configured by the
# MINIO_NOTIFY_WEBHOOK_*_RADSEARCH variables of the minio service). Idempotent.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

for bucket in $RADSEARCH_BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
done

# radsearch reads images and manifests; it never writes to or deletes from the archive.
mc admin user add local "$RADSEARCH_S3_ACCESS_KEY" "$RADSEARCH_S3_SECRET_KEY"
mc admin policy attach local readonly --user "$RADSEARCH_S3_ACCESS_KEY" || true

for bucket in $RADSEARCH_EVENT_BUCKETS; do
  mc event add "local/$bucket" arn:minio:sqs::RADSEARCH:webhook --event put,delete --ignore-existing
done
mc event list "local/$(echo "$RADSEARCH_EVENT_BUCKETS" | cut -d' ' -f1)"
