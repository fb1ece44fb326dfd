"""Container probes (exec, httpGet, tcpSocket, grpc) and the workers that run them."""
