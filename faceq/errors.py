"""One exception type per failure domain, each with a message a user can act on."""


class FaceqError(Exception):
    """Base class of every error faceq raises on purpose."""


class ConfigError(FaceqError):
    """A setting is missing, malformed or names something that does not exist."""


class StorageError(FaceqError):
    """An object could not be read from or written to storage. ``transient``: the store was
    unreachable or overloaded (worth retrying later), not a missing or forbidden object."""

    transient = False


class ModelError(FaceqError):
    """Weights could not be loaded, or the model cannot run as configured."""


class DeviceOutOfMemory(ModelError):
    """Even a single image does not fit on the device (another process holds its memory)."""


class BadInputError(FaceqError):
    """One input item cannot be used. ``code`` is a short, stable reason for the error row."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JobError(FaceqError):
    """A job cannot be planned, or cannot complete."""
