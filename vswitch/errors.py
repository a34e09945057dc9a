"""Errors the control plane raises; the API maps each kind to an HTTP status."""


class VswitchError(Exception):
    """Base of every error vswitch reports to an operator."""

    kind = "error"


class InvalidArgument(VswitchError, ValueError):
    """A value is malformed or out of range (HTTP 400)."""

    kind = "invalid_argument"


class NotFound(VswitchError, LookupError):
    """A named network, port, peer or FDB entry does not exist (HTTP 404)."""

    kind = "not_found"


class Conflict(VswitchError):
    """The request clashes with current state, e.g. a duplicate name (HTTP 409)."""

    kind = "conflict"


class StateNotSaved(VswitchError):
    """The state file cannot be written: a change is refused before it is made, or took
    effect but could not be saved (HTTP 500)."""

    kind = "state_not_saved"


class ConfigError(VswitchError):
    """A config or state file is unusable; the message names the key and value."""

    kind = "config_error"
