"""Errors that mean "this input is bad": the job fails with the message, nothing is retried."""


class InputError(ValueError):
    """A request that can never succeed as given (bad image, unknown map, bad option)."""


class ImageError(InputError):
    """The bytes are not an image we accept."""


class MapError(InputError):
    """The map does not exist, or does not fit the request."""
