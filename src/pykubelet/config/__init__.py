"""The kubelet's configuration: KubeletConfiguration files and the upstream kubelet's flags."""
