"""The gateway: the OpenAI-compatible HTTP endpoint of the tenants' deployed models (and proxy mode)."""
