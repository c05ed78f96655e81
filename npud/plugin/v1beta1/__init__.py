"""Generated code for the kubelet's device plugin API (do not edit)."""
