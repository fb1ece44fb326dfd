"""The local cluster: real upstream control-plane programs plus containerd nodes in network namespaces.

Development tooling for pynode (it is not part of the installed distribution):
`python -m localcluster up|down|status|env|build`.
"""
