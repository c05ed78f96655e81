"""The npud daemon: configuration, logging, discovery, the gRPC server and systemd integration."""
