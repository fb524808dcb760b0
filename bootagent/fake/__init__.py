"""The project's own fake Azure platform: IMDS, managed identity (with Azure Arc's
challenge) and the wireserver, on one loopback port, with injectable faults.

Use ``bootagent.fake.server.FakeImds`` in tests and ``bootagent fake-imds`` (or
``python -m bootagent.fake``) from a shell. Nothing here is imported by the agent.
"""
