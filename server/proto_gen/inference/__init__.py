"""Generated gRPC stubs; regenerate with proto/generate.sh. POOL holds the inference.* descriptors."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
