"""What both node agents share: klog-format logs, sd_notify, the API connection, list+watch, a tiny HTTP server."""
