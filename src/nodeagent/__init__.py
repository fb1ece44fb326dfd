"""What both node agents share: klog-format logs, sd_notify, and list+watch of API objects."""
