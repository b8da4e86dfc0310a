"""EV_Registry: the registry of charging points (docs/registry.md).

An HTTPS REST API (FastAPI on uvicorn) where an operator registers CPs, each getting a
credential shown once (stored only as a scrypt hash in Central's database), and deregisters
them; ``client.RegistryClient`` is its client (installers' commands, the Monitor).
"""
