"""An in-test multiplexing HTTP codec ("mux"): several streams interleaved on one connection,
as HTTP/2 will, with a wire format small enough to read in a test. It proves that the
connection manager and the upstream pool are not HTTP/1-shaped."""
