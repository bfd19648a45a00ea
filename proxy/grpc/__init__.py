"""gRPC pieces shared by the filters that call gRPC services (ext_authz's authorization
service): protobuf set up for a free-threaded build (protobuf_env.py) and a unary call's
framing and status (unary.py). No I/O here: the calls go over the worker's AsyncClient."""
