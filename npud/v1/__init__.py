"""Generated gRPC/protobuf code for npud API v1 (do not edit)."""
