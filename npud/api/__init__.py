"""The gRPC edge: servicers translating between npud.v1 messages and core objects."""
