"""npuctl: the operator CLI. Talks gRPC only; never imports core or devices."""
