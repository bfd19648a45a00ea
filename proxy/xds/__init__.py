"""xDS: dynamic configuration sources and their application on the main thread.

`subscription` is the seam (a source delivers resources to callbacks that validate and apply
them); `file_source` is the filesystem source; `grpc_stream` is one gRPC call over HTTP/2 on
the main loop, `grpc_mux` state-of-the-world xDS over it (ADS or per type) and
`grpc_delta_mux` incremental xDS; `proto` decodes Envoy's protobuf messages into the plain data
the validators take; `xds_manager` owns the subscriptions (polling files on the main thread's
tick, streams push); `cds`, `lds`, `rds`, `eds` validate and apply each type.
"""
